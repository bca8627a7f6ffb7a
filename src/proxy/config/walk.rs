//! The TOML walker: a [`Tbl`] reads one table's values by key and type, names every key in
//! full in its messages (`refresh.timeout`, `route[1].prefix`), and refuses the first key the
//! table does not know; [`syntax_error`] turns a TOML parse error into one line with its
//! position.

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Table, Value};

use super::values::parse_duration;
use crate::Provider;

/// One line for a TOML syntax error: message plus line and column (1-based).
pub(super) fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = &text.as_bytes()[..start];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            // A duplicate key is named (a key is never a secret; other spans may hold values).
            let key = text.get(span.clone()).map(str::trim).unwrap_or("");
            let message = if message == "duplicate key" && !key.is_empty() && !key.contains('\n') {
                format!("duplicate key {:?}", key.trim_matches('"'))
            } else {
                message
            };
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    }
}

/// A table being read: its display name (`root`, `refresh`, `route[0]`) and the prefix of its
/// keys in messages (``, `refresh.`, `route[0].`).
pub(super) struct Tbl<'t> {
    pub(super) table: &'t Table,
    pub(super) name: String,
    prefix: String,
}

impl<'t> Tbl<'t> {
    pub(super) fn root(table: &'t Table) -> Self {
        Tbl {
            table,
            name: "root".into(),
            prefix: String::new(),
        }
    }

    pub(super) fn named(table: &'t Table, name: String) -> Self {
        let prefix = format!("{name}.");
        Tbl {
            table,
            name,
            prefix,
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown key {k:?} in table {}", self.name)),
            None => Ok(()),
        }
    }

    pub(super) fn type_error(&self, key: &str, expected: &str, found: &Value) -> String {
        format!(
            "{}: expected {expected}, found {}",
            self.key(key),
            found.type_str()
        )
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<&'t str>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    /// An array of strings.
    pub(super) fn strs(&self, key: &str) -> Result<Option<Vec<&'t str>>, String> {
        self.array(key, "an array of strings", |_, item| match item {
            Value::String(s) => Ok(s.as_str()),
            v => Err(format!(
                "{}: expected an array of strings, found an array holding {}",
                self.key(key),
                v.type_str()
            )),
        })
    }

    /// An array, each item read by `item(index, value)` (the first error wins); `expected`
    /// names the array in the error when the value is not an array.
    pub(super) fn array<T>(
        &self,
        key: &str,
        expected: &str,
        mut item: impl FnMut(usize, &'t Value) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item(i, v))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.type_error(key, expected, v)),
        }
    }

    pub(super) fn required_str(&self, key: &str) -> Result<&'t str, String> {
        self.str(key)?
            .ok_or_else(|| format!("missing key {key:?} in table {}", self.name))
    }

    pub(super) fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(v) => Err(self.type_error(key, "an integer", v)),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(key, "true or false", v)),
        }
    }

    pub(super) fn table(&self, key: &str) -> Result<Option<Tbl<'t>>, String> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(Tbl::named(t, self.key(key)))),
            Some(v) => Err(self.type_error(key, &format!("a table ([{}])", self.key(key)), v)),
        }
    }

    /// An array of tables (`[[key]]`); entries are named `key[0]`, `key[1]`, ….
    pub(super) fn tables(&self, key: &str) -> Result<Option<Vec<Tbl<'t>>>, String> {
        let expected = format!("an array of tables ([[{}]])", self.key(key));
        self.array(key, &expected, |i, item| match item {
            Value::Table(t) => Ok(Tbl::named(t, format!("{}[{i}]", self.key(key)))),
            v => Err(format!(
                "{}[{i}]: expected a table, found {}",
                self.key(key),
                v.type_str()
            )),
        })
    }

    pub(super) fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => parse_duration(s).map(Some).ok_or_else(|| {
                format!(
                    "{}: invalid duration {s:?} (expected e.g. \"30s\", \"5m\")",
                    self.key(key)
                )
            }),
        }
    }

    pub(super) fn socket_addr(&self, key: &str) -> Result<Option<Option<SocketAddr>>, String> {
        match self.str(key)? {
            None => Ok(None),
            Some("") if key == "admin_listen" => Ok(Some(None)),
            Some(s) => s.parse::<SocketAddr>().map(|a| Some(Some(a))).map_err(|_| {
                format!(
                    "{}: invalid socket address {s:?} (expected e.g. \"127.0.0.1:8080\")",
                    self.key(key)
                )
            }),
        }
    }

    pub(super) fn provider(&self, key: &str) -> Result<Provider, String> {
        let s = self.required_str(key)?;
        s.parse::<Provider>()
            .map_err(|e| format!("{}: {e}", self.key(key)))
    }
}
