//! PostgreSQL behind the connection seam: the store's SQL, written for
//! SQLite, translated once per statement text ([`translate`]) and prepared
//! once per connection; values converted to whatever type PostgreSQL
//! inferred for each parameter and column, so the logic above reads and
//! binds `i64`, `f64`, text and bytes the same on both backends.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use super::{Error, Params, Result, ValueRef};

/// One PostgreSQL connection with its prepared statements.
pub struct PgConn {
    /// Always Some until dropped (see `Drop`).
    client: RefCell<Option<postgres::Client>>,
    prepared: RefCell<HashMap<String, postgres::Statement>>,
    /// Whether a transaction is open: PostgreSQL keeps one open after a
    /// failed statement (aborted, until rolled back), never ends it alone.
    in_tx: Cell<bool>,
}

impl PgConn {
    pub fn new(client: postgres::Client) -> Self {
        PgConn {
            client: RefCell::new(Some(client)),
            prepared: RefCell::new(HashMap::new()),
            in_tx: Cell::new(false),
        }
    }

    pub fn client(&self) -> std::cell::RefMut<'_, postgres::Client> {
        // Taken out only by `Drop`, after which nothing can call this.
        std::cell::RefMut::map(self.client.borrow_mut(), |c| {
            c.as_mut().expect("a connection is open until dropped")
        })
    }

    pub fn prepare(&self, sql: &str) -> Result<postgres::Statement> {
        if let Some(st) = self.prepared.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = self
            .client()
            .prepare(&translate(sql))
            .map_err(|e| Error::Prepare(format!("{}: {}", super::Error::from(e), sql.trim())))?;
        self.prepared
            .borrow_mut()
            .insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        let sql = translate(sql);
        self.client().batch_execute(&sql)?;
        let head = sql.trim_start().to_ascii_uppercase();
        if head.starts_with("BEGIN") {
            self.in_tx.set(true);
        } else if head.starts_with("COMMIT") || head == "ROLLBACK" || head.starts_with("ROLLBACK;")
        {
            self.in_tx.set(false);
        }
        Ok(())
    }

    pub fn in_transaction(&self) -> bool {
        self.in_tx.get()
    }

    pub fn execute(&self, st: &postgres::Statement, params: &dyn Params) -> Result<usize> {
        let values = owned(st, params)?;
        let refs = as_sql(&values);
        Ok(self.client().execute(st, &refs)? as usize)
    }

    pub fn query(
        &self,
        st: &postgres::Statement,
        params: &dyn Params,
    ) -> Result<Vec<postgres::Row>> {
        let values = owned(st, params)?;
        let refs = as_sql(&values);
        Ok(self.client().query(st, &refs)?)
    }
}

impl Drop for PgConn {
    /// The driver's connection ends by running its own runtime, which
    /// panics on a thread inside another one: a store dropped by async
    /// code closes its connections on a thread of their own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("store-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

/// A parameter, owned: the seam hands values out one at a time, and
/// PostgreSQL needs them all at once.
#[derive(Debug)]
enum Owned {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

fn owned(st: &postgres::Statement, params: &dyn Params) -> Result<Vec<Owned>> {
    let want = st.params().len();
    if params.len() != want {
        return Err(Error::ParameterCount {
            want,
            got: params.len(),
        });
    }
    let mut out = Vec::with_capacity(want);
    params.each(&mut |_, v| {
        out.push(match v {
            ValueRef::Null => Owned::Null,
            ValueRef::Integer(i) => Owned::Integer(i),
            ValueRef::Real(f) => Owned::Real(f),
            ValueRef::Text(s) => Owned::Text(s.to_owned()),
            ValueRef::Blob(b) => Owned::Blob(b.to_vec()),
        });
        Ok(())
    })?;
    Ok(out)
}

fn as_sql(values: &[Owned]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

type BoxError = Box<dyn StdError + Sync + Send>;

fn wrong(ty: &Type, what: &str) -> BoxError {
    format!("cannot bind {what} to a parameter of type {ty}").into()
}

impl ToSql for Owned {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Owned::Null => Ok(IsNull::Yes),
            Owned::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => i.to_string().to_sql(ty, out),
                _ => Err(wrong(ty, "an integer")),
            },
            Owned::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::INT8 if f.fract() == 0.0 => (*f as i64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => f.to_string().to_sql(ty, out),
                _ => Err(wrong(ty, "a real")),
            },
            Owned::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.as_str().to_sql(&Type::TEXT, out)
                }
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => Err(wrong(ty, "text")),
            },
            Owned::Blob(b) => match *ty {
                Type::BYTEA => b.as_slice().to_sql(ty, out),
                _ => Err(wrong(ty, "bytes")),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column's value as the seam sees it.
pub struct Val<'a>(pub ValueRef<'a>);

impl<'a> FromSql<'a> for Val<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Val(match *ty {
            Type::INT8 => ValueRef::Integer(i64::from_sql(ty, raw)?),
            Type::INT4 => ValueRef::Integer(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => ValueRef::Integer(i16::from_sql(ty, raw)?.into()),
            Type::OID => ValueRef::Integer(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => ValueRef::Integer(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => ValueRef::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => ValueRef::Real(f32::from_sql(ty, raw)?.into()),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => ValueRef::Blob(raw),
            _ => ValueRef::Text(<&str>::from_sql(&Type::TEXT, raw)?),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Val(ValueRef::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A NUMERIC (what PostgreSQL's SUM of BIGINTs is) as an integer when it
/// is a whole number that fits one, else as a real. Binary form: digit
/// count, weight, sign, display scale, then base-10000 digits.
fn numeric(raw: &[u8]) -> Result<ValueRef<'static>, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a NUMERIC value cut short".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    let dscale = word(3)?;
    if sign == 0xC000 {
        return Ok(ValueRef::Real(f64::NAN));
    }
    let mut whole: i128 = 0;
    let mut real = 0f64;
    let mut fits = dscale == 0;
    for i in 0..ndigits {
        let d = word(4 + i)?;
        let power = weight - i as i32;
        real += f64::from(d) * 10000f64.powi(power);
        if power >= 0 {
            match 10000i128
                .checked_pow(power as u32)
                .and_then(|p| p.checked_mul(i128::from(d)))
                .and_then(|v| whole.checked_add(v))
            {
                Some(v) => whole = v,
                None => fits = false,
            }
        } else if d != 0 {
            fits = false;
        }
    }
    let negative = sign == 0x4000;
    if fits {
        let v = if negative { -whole } else { whole };
        if let Ok(v) = i64::try_from(v) {
            return Ok(ValueRef::Integer(v));
        }
    }
    Ok(ValueRef::Real(if negative { -real } else { real }))
}

/// The store's SQL (SQLite's dialect, kept to what both understand) in
/// PostgreSQL's: `?N` parameters become `$N`; `IS ?N` and `IS NOT ?N`
/// become `IS [NOT] DISTINCT FROM`; two-argument `MAX(a, b)` becomes
/// `GREATEST`; `json_extract(x, '$.k')` becomes a jsonb lookup read as a
/// number; `BEGIN IMMEDIATE` becomes `BEGIN`. Quoted text is left alone.
pub fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i = (i + 1).min(chars.len());
            out.extend(&chars[start..i]);
            continue;
        }
        if c == '?' && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            out.push('$');
            i += 1;
            continue;
        }
        if starts_word(&chars, i, "MAX(") {
            if let Some(close) = matching(&chars, i + 3) {
                if top_level_comma(&chars[i + 4..close]) {
                    out.push_str("GREATEST(");
                    i += 4;
                    continue;
                }
            }
        }
        if starts_word(&chars, i, "json_extract(") {
            if let Some(close) = matching(&chars, i + 12) {
                let inner: String = chars[i + 13..close].iter().collect();
                if let Some((value, path)) = inner.rsplit_once(',') {
                    let key = path.trim().trim_matches('\'').trim_start_matches("$.");
                    out.push_str(&format!(
                        "(({})::jsonb->>'{key}')::numeric",
                        translate(value.trim())
                    ));
                    i = close + 1;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    let out = out
        .replace(" IS NOT $", " IS DISTINCT FROM $")
        .replace(" IS $", " IS NOT DISTINCT FROM $");
    match out.trim_start().strip_prefix("BEGIN IMMEDIATE") {
        Some(rest) => format!("BEGIN{rest}"),
        None => out,
    }
}

/// Whether `word` (ASCII, any case) starts at `i`, not inside a longer name.
fn starts_word(chars: &[char], i: usize, word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    if i + w.len() > chars.len() {
        return false;
    }
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return false;
    }
    chars[i..i + w.len()]
        .iter()
        .zip(&w)
        .all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// The index of the parenthesis closing the one at `open`.
fn matching(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quoted = false;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn top_level_comma(chars: &[char]) -> bool {
    let mut depth = 0;
    let mut quoted = false;
    for &c in chars {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_comparisons_are_rewritten_outside_quotes() {
        assert_eq!(
            translate("UPDATE t SET a = ?1 WHERE b = '?2' AND c IS NOT ?3 AND d IS ?4"),
            "UPDATE t SET a = $1 WHERE b = '?2' AND c IS DISTINCT FROM $3 AND d IS NOT DISTINCT FROM $4"
        );
        assert_eq!(translate("BEGIN IMMEDIATE"), "BEGIN");
    }

    #[test]
    fn scalar_max_becomes_greatest_and_aggregate_max_stays() {
        assert_eq!(
            translate("SELECT MAX(seq), MAX(a, (b + 1)), max(x, ?1) FROM t"),
            "SELECT MAX(seq), GREATEST(a, (b + 1)), GREATEST(x, $1) FROM t"
        );
        assert_eq!(translate("SELECT TMAX(a, b)"), "SELECT TMAX(a, b)");
    }

    #[test]
    fn json_extract_reads_a_number_from_jsonb() {
        assert_eq!(
            translate("SUM(json_extract(s.needs, '$.memory_mb'))"),
            "SUM(((s.needs)::jsonb->>'memory_mb')::numeric)"
        );
    }

    #[test]
    fn numerics_decode_to_integers_when_whole() {
        // 12345678 = digits [1234, 5678], weight 1.
        let raw = [0, 2, 0, 1, 0, 0, 0, 0, 4, 210, 22, 46];
        assert_eq!(numeric(&raw).unwrap(), ValueRef::Integer(12_345_678));
        let neg = [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 7];
        assert_eq!(numeric(&neg).unwrap(), ValueRef::Integer(-7));
        // 1.5: digits [1, 5000], weight 0, dscale 1.
        let half = [0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 19, 136];
        assert_eq!(numeric(&half).unwrap(), ValueRef::Real(1.5));
        let zero = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(numeric(&zero).unwrap(), ValueRef::Integer(0));
    }
}
