//! Values crossing the connection seam: parameters go in as [`ValueRef`]s
//! (borrowed, so binding a string never copies it) and columns come out as
//! [`ValueRef`]s that [`FromValue`] turns into Rust types. Every integer is
//! an `i64` on the way in and out, whatever width the database column has,
//! so a backend with strict integer types (PostgreSQL's INT4 and INT8)
//! cannot refuse a parameter of the other width.

use super::Error;

/// One value, borrowed: a parameter to bind or a column just read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    /// The value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Integer(_) => "INTEGER",
            ValueRef::Real(_) => "REAL",
            ValueRef::Text(_) => "TEXT",
            ValueRef::Blob(_) => "BLOB",
        }
    }
}

/// One value, owned: a row copied from one database to another.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl FromValue for Value {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
        Ok(match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(s) => Value::Text(s.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        })
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Blob(b) => ValueRef::Blob(b),
        })
    }
}

impl Params for Vec<Value> {
    fn each(
        &self,
        bind: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        bind_each(self, bind)
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// Binds `items` in order, the first as `?1`.
fn bind_each<T: ToValue>(
    items: &[T],
    bind: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    for (i, p) in items.iter().enumerate() {
        bind(i + 1, p.to_value()?)?;
    }
    Ok(())
}

/// A Rust value that can be bound as a parameter.
pub trait ToValue {
    fn to_value(&self) -> Result<ValueRef<'_>, Error>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        match self {
            Some(v) => v.to_value(),
            None => Ok(ValueRef::Null),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(ValueRef::Text(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(ValueRef::Text(self))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(ValueRef::Blob(self))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(ValueRef::Blob(self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(ValueRef::Real(*self))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Result<ValueRef<'_>, Error> {
        Ok(ValueRef::Integer(i64::from(*self)))
    }
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<ValueRef<'_>, Error> {
                i64::try_from(*self)
                    .map(ValueRef::Integer)
                    .map_err(|_| Error::Conversion(format!("{} does not fit a 64-bit integer", self)))
            }
        }
    )*};
}
int_to_value!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);

/// A Rust type that a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error>;
}

fn mismatch<T>(v: ValueRef<'_>, want: &str) -> Result<T, Error> {
    Err(Error::Conversion(format!(
        "a {} column read as {want}",
        v.kind()
    )))
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
        match v {
            ValueRef::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for String {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
        match v {
            ValueRef::Text(s) => Ok(s.to_owned()),
            v => mismatch(v, "text"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            ValueRef::Text(s) => Ok(s.as_bytes().to_vec()),
            v => mismatch(v, "bytes"),
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
        match v {
            ValueRef::Real(f) => Ok(f),
            // As SQLite does: an integer column reads as a real.
            ValueRef::Integer(i) => Ok(i as f64),
            v => mismatch(v, "a real"),
        }
    }
}

impl FromValue for bool {
    fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
        match v {
            ValueRef::Integer(i) => Ok(i != 0),
            v => mismatch(v, "a boolean"),
        }
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
                match v {
                    ValueRef::Integer(i) => <$t>::try_from(i).map_err(|_| {
                        Error::Conversion(format!("{i} is out of range for {}", stringify!($t)))
                    }),
                    v => mismatch(v, stringify!($t)),
                }
            }
        }
    )*};
}
int_from_value!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);

// The ids bind and read as the text or integer they wrap, so their
// columns are the same as when they were plain values.
macro_rules! text_id_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<ValueRef<'_>, Error> {
                Ok(ValueRef::Text(self.as_str()))
            }
        }
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
                String::from_value(v).map(<$t>::from)
            }
        }
    )*};
}
text_id_value!(orchestrator_core::RunId, orchestrator_core::AgentId);

macro_rules! int_id_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<ValueRef<'_>, Error> {
                Ok(ValueRef::Integer(self.get()))
            }
        }
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, Error> {
                i64::from_value(v).map(<$t>::from)
            }
        }
    )*};
}
int_id_value!(orchestrator_core::JobId, orchestrator_core::LeaseId);

/// The parameters of one statement, bound by position (`?1` is the first).
pub trait Params {
    /// Calls `bind` with each parameter in order.
    fn each(
        &self,
        bind: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
    ) -> Result<(), Error>;
    /// How many parameters there are.
    fn len(&self) -> usize;
}

impl Params for () {
    fn each(
        &self,
        _: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn len(&self) -> usize {
        0
    }
}

// `[]` and `[a]`, `[a, b]`, ... of one type, as rusqlite takes them: the
// empty array has its own type so that `[]` needs no annotation.
impl Params for [&dyn ToValue; 0] {
    fn each(
        &self,
        _: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn len(&self) -> usize {
        0
    }
}

macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn each(
                &self,
                bind: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
            ) -> Result<(), Error> {
                bind_each(self, bind)
            }
            fn len(&self) -> usize {
                $n
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

impl Params for &[&dyn ToValue] {
    fn each(
        &self,
        bind: &mut dyn FnMut(usize, ValueRef<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        bind_each(self, bind)
    }
    fn len(&self) -> usize {
        <[&dyn ToValue]>::len(self)
    }
}

/// Parameters of mixed types: `params![id, name, now]`.
macro_rules! params {
    () => { () };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::db::ToValue),+] as &[&dyn $crate::db::ToValue]
    };
}
pub(crate) use params;
