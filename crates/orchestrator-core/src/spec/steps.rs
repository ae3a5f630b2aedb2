//! A stage's step arithmetic: which step job number `n` runs across a loop's
//! iterations, what that job is called, and where the stage goes after it
//! (the next step, the next iteration, its validation, or the end).

use super::{Stage, Step};
use crate::machine::{after_step, After};

/// What a stage's validation job is called, where a step's name would be.
pub const VALIDATION_NAME: &str = "validate";

impl Stage {
    /// Step job number `position` runs, counted across a loop's iterations;
    /// None for a stage without steps.
    pub fn step_at(&self, position: u32) -> Option<&Step> {
        let n = self.steps.len().max(1);
        self.steps.get(position as usize % n)
    }

    /// The name of job `position`: its step's own, or the validation's.
    pub fn job_name(&self, position: u32) -> Option<String> {
        if self.validation_step() == Some(position) {
            return Some(VALIDATION_NAME.to_owned());
        }
        self.step_at(position)?.name.clone()
    }

    /// Where the stage goes after job `position` succeeded: a loop's
    /// `until` (met or not) decides at the end of an iteration, and the
    /// validation comes after the last step.
    pub fn after(&self, position: u32, until_met: Option<bool>) -> After {
        match after_step(
            position,
            u32::try_from(self.steps.len()).unwrap_or(u32::MAX),
            self.iterations(),
            until_met,
        ) {
            After::Done => self.validation_step().map_or(After::Done, After::Validate),
            after => after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CommandSpec, Repeat, Validate};

    fn step(name: Option<&str>) -> Step {
        Step {
            name: name.map(str::to_owned),
            ..Default::default()
        }
    }

    /// Two steps, looped at most three times, then validated.
    fn looped() -> Stage {
        Stage {
            id: "s".into(),
            steps: vec![step(Some("a")), step(Some("b"))],
            repeat: Some(Repeat {
                max: 3,
                until: Some(super::super::Until::Command(CommandSpec::default())),
                shell: false,
            }),
            validate: Some(Validate::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_loop_counts_its_steps_across_iterations_then_validates() {
        let s = looped();
        let names: Vec<_> = (0..7).map(|p| s.job_name(p)).collect();
        let n = |x: &str| Some(x.to_owned());
        assert_eq!(
            names,
            vec![
                n("a"),
                n("b"),
                n("a"),
                n("b"),
                n("a"),
                n("b"),
                n("validate")
            ]
        );
        assert_eq!(s.step_at(3).and_then(|x| x.name.as_deref()), Some("b"));
        assert_eq!(s.after(0, None), After::Step(1));
        // The end of an iteration whose `until` is met: on to the validation.
        assert_eq!(s.after(1, Some(true)), After::Validate(6));
        assert_eq!(s.after(1, Some(false)), After::Step(2));
        // The last iteration's `until` still fails: exhausted, not validated.
        assert_eq!(s.after(5, Some(false)), After::Exhausted);
    }

    #[test]
    fn a_plain_stage_ends_after_its_last_step() {
        let s = Stage {
            steps: vec![step(None)],
            ..Default::default()
        };
        assert_eq!(s.job_name(0), None);
        assert_eq!(s.after(0, None), After::Done);
        assert!(s.step_at(0).is_some());
    }
}
