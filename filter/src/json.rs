//! A small, strict JSON reader (RFC 8259) and the little JSON the filter writes.
//!
//! Read: pluginConfig, the IdP's discovery document, JWK Set and token responses, JWT headers and claims.
//! Strict: no trailing commas, comments, leading zeros, lone surrogates, raw control characters in strings,
//! invalid UTF-8, or anything but whitespace after the value; nesting stops at [`MAX_DEPTH`]. Callers bound
//! the input size.
//!
//! Objects keep their members in document order, duplicates included: [`Object::get`] reads the last one
//! (as most parsers do), and callers that must refuse duplicates ask [`Object::duplicate`]. Numbers keep
//! their literal, so integers are exact at any size and nothing here needs floating point.

use alloc::string::String;
use alloc::vec::Vec;

use core::fmt::{self, Write as _};

/// Deepest nesting of arrays and objects accepted. The documents we read nest a few levels.
pub const MAX_DEPTH: usize = 64;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A number, as its (validated) literal. Two numbers are equal when their decimal values are: `3`, `3.0`
/// and `30e-1` are one number.
#[derive(Debug, Clone)]
pub struct Number(String);

/// An object's members in document order. Lookups are linear: the objects we read are small.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object(Vec<(String, Value)>);

/// Why a document is not JSON: what was wrong, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl core::error::Error for Error {}

impl Error {
    /// The 1-based line and column (in bytes) of the error in `input`, the document it came from.
    pub fn line_col(&self, input: &[u8]) -> (usize, usize) {
        let before = input.get(..self.offset).unwrap_or(input);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        (line, before.len() - line_start + 1)
    }
}

/// Parses one JSON document.
pub fn parse(input: &[u8]) -> Result<Value, Error> {
    let mut p = Parser { s: input, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i < input.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(v)
}

/// Parses a JSON document that must be an object.
pub fn parse_object(input: &[u8]) -> Result<Object, Error> {
    match parse(input)? {
        Value::Object(o) => Ok(o),
        _ => Err(Error {
            offset: 0,
            reason: "not an object",
        }),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err(&self, reason: &'static str) -> Error {
        Error {
            offset: self.i,
            reason,
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A value; `depth` is the number of arrays and objects around it.
    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end")),
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, Error> {
        if self
            .s
            .get(self.i..)
            .is_some_and(|r| r.starts_with(word.as_bytes()))
        {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn enter(&self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        Ok(())
    }

    /// After a member or an element: `,` (more follow) or the closing bracket.
    fn more(&mut self, close: u8) -> Result<bool, Error> {
        self.ws();
        if self.eat(b',') {
            self.ws();
            Ok(true)
        } else if self.eat(close) {
            Ok(false)
        } else if close == b']' {
            Err(self.err("expected `,` or `]`"))
        } else {
            Err(self.err("expected `,` or `}`"))
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        self.enter(depth)?;
        self.i += 1;
        self.ws();
        let mut items = Vec::new();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            if !self.more(b']')? {
                return Ok(Value::Array(items));
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        self.enter(depth)?;
        self.i += 1;
        self.ws();
        let mut members = Vec::new();
        if self.eat(b'}') {
            return Ok(Value::Object(Object(members)));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a member name"));
            }
            let name = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return Err(self.err("expected `:`"));
            }
            self.ws();
            members.push((name, self.value(depth)?));
            if !self.more(b'}')? {
                return Ok(Value::Object(Object(members)));
            }
        }
    }

    /// A string, at its opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            // Copy the run up to the next quote, backslash or control character in one go.
            let rest = self.s.get(self.i..).unwrap_or_default();
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(rest.len());
            out.extend_from_slice(rest.get(..run).unwrap_or_default());
            self.i += run;
            match self.peek() {
                Some(b'"') => break,
                Some(b'\\') => {
                    self.i += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
        let start = self.i;
        self.i += 1;
        String::from_utf8(out).map_err(|e| Error {
            // Where the bad bytes end, roughly (escapes make the string shorter than its source).
            offset: start.saturating_sub(e.as_bytes().len() - e.utf8_error().valid_up_to()),
            reason: "invalid UTF-8 in string",
        })
    }

    /// An escape, after its backslash.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let simple = match self.peek() {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                self.i += 1;
                let c = self.unicode_escape()?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(self.err("invalid escape")),
        };
        self.i += 1;
        out.push(simple);
        Ok(())
    }

    /// The code point of `\uXXXX` (after its `\u`), or of a surrogate pair `\uD83D\uDE00`. A lone
    /// surrogate is not a character: refused.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let at = self.i;
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if !(self.eat(b'\\') && self.eat(b'u')) {
                    return Err(self.err("lone surrogate"));
                }
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.err("lone surrogate"));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                return Err(Error {
                    offset: at,
                    reason: "lone surrogate",
                });
            }
            _ => hi,
        };
        char::from_u32(code).ok_or(Error {
            offset: at,
            reason: "invalid escape",
        })
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut n = 0;
        for _ in 0..4 {
            let d = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or(self.err("invalid \\u escape"))?;
            n = n * 16 + d;
            self.i += 1;
        }
        Ok(n)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, Error> {
        let start = self.i;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.err("leading zero"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        if self.eat(b'.') {
            self.some_digits()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.some_digits()?;
        }
        let literal = self.s.get(start..self.i).unwrap_or_default();
        // ASCII only (the digits, signs, `.` and `e` just read): taken as it is, not char by char.
        Ok(Value::Number(Number(
            core::str::from_utf8(literal).unwrap_or_default().into(),
        )))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), Error> {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(self.err("invalid number"));
        }
        self.digits();
        Ok(())
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// An integer in `u64`'s range (written without fraction or exponent).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_number().and_then(Number::as_u64)
    }

    /// An integer in `i64`'s range (written without fraction or exponent).
    pub fn as_i64(&self) -> Option<i64> {
        self.as_number().and_then(Number::as_i64)
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    pub fn is_array(&self) -> bool {
        matches!(self, Value::Array(_))
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    /// A member of an object (the last of that name); `None` for other values.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.get(name))
    }

    /// A member name that occurs twice in some object of this value, at any depth.
    pub fn find_duplicate(&self) -> Option<&str> {
        match self {
            Value::Object(o) => o
                .duplicate()
                .or_else(|| o.iter().find_map(|(_, v)| v.find_duplicate())),
            Value::Array(a) => a.iter().find_map(Value::find_duplicate),
            _ => None,
        }
    }
}

impl Number {
    /// The literal as written in the document.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An integer in `u64`'s range (written without fraction or exponent).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }

    /// An integer in `i64`'s range (written without fraction or exponent).
    pub fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }

    /// The whole part of a non-negative number of any form (`1.5e3` is 1500), `u64::MAX` when larger;
    /// `None` when negative. For NumericDates, which may have a fraction.
    pub fn floor_u64(&self) -> Option<u64> {
        let (negative, digits, point, _) = self.decimal();
        if digits.is_empty() {
            return Some(0);
        }
        if negative {
            return None;
        }
        // value = 0.d1 d2 … × 10^point; the whole part is the first `point` digits, zero-padded. The first
        // digit is not zero, so past 20 digits it no longer fits (clamped there first: on wasm32 a `point`
        // of 2^32 or more would not convert to `usize`).
        let mut n: u64 = 0;
        for i in 0..usize::try_from(point.clamp(0, 21)).unwrap_or(0) {
            let d = digits.get(i).map_or(0, |d| d - b'0');
            match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d))) {
                Some(next) => n = next,
                None => return Some(u64::MAX),
            }
        }
        Some(n)
    }

    /// The decimal value: `(negative, digits, point, exact)` meaning ±0.d1 d2 … × 10^point, with no leading
    /// or trailing zero digits (zero is `(false, [], 0, true)`). An exponent beyond ±2^40 is clamped to it,
    /// and then `exact` is false.
    fn decimal(&self) -> (bool, Vec<u8>, i64, bool) {
        const LIMIT: i64 = 1 << 40;
        let s = self.0.as_str();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (mantissa, exp) = s.split_once(['e', 'E']).unwrap_or((s, ""));
        let (exp_negative, exp) = match exp.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, exp.strip_prefix('+').unwrap_or(exp)),
        };
        let (mut e, mut exact) = (0i64, true);
        for d in exp.bytes() {
            e = e * 10 + i64::from(d - b'0');
            if e > LIMIT {
                (e, exact) = (LIMIT, false);
                break;
            }
        }
        if exp_negative {
            e = -e;
        }
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        // The digits of `int` then `frac`, without the leading zeros of the two together (copied as two
        // slices: a chained iterator took 1 KB of the module).
        let zeros = |s: &str| s.bytes().take_while(|&d| d == b'0').count();
        let int_zeros = zeros(int);
        let leading = if int_zeros == int.len() {
            int_zeros + zeros(frac)
        } else {
            int_zeros
        };
        let mut digits = int.as_bytes().get(int_zeros..).unwrap_or_default().to_vec();
        digits.extend_from_slice(
            frac.as_bytes()
                .get(leading - int_zeros..)
                .unwrap_or_default(),
        );
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        if digits.is_empty() {
            return (false, digits, 0, true);
        }
        // Both lengths are below the input's, far from i64's limits.
        let len = |n: usize| i64::try_from(n).unwrap_or(LIMIT);
        (negative, digits, len(int.len()) - len(leading) + e, exact)
    }
}

impl PartialEq for Number {
    fn eq(&self, other: &Number) -> bool {
        match (self.decimal(), other.decimal()) {
            ((a, b, c, true), (x, y, z, true)) => (a, b, c) == (x, y, z),
            _ => self.0 == other.0,
        }
    }
}

impl Object {
    pub fn new() -> Object {
        Object(Vec::new())
    }

    /// The value of the last member named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// Sets `name` to `value`, replacing every member of that name.
    pub fn insert(&mut self, name: String, value: Value) {
        self.remove(&name);
        self.0.push((name, value));
    }

    /// Appends a member, as a document that names it again would (unlike [`Object::insert`]).
    pub(crate) fn push(&mut self, name: String, value: Value) {
        self.0.push((name, value));
    }

    /// Removes every member named `name`; returns the last one's value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        if !self.contains_key(name) {
            return None;
        }
        let (matching, rest): (Vec<_>, Vec<_>) = core::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.0 = rest;
        matching.into_iter().last().map(|(_, v)| v)
    }

    /// Keeps the members `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str, &Value) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A member name that occurs more than once.
    pub fn duplicate(&self) -> Option<&str> {
        let mut names: Vec<&str> = Vec::with_capacity(self.0.len());
        for (k, _) in &self.0 {
            names.push(k);
        }
        heapsort(&mut names);
        names.windows(2).find_map(|w| match w {
            [a, b] if a == b => Some(*a),
            _ => None,
        })
    }
}

/// Sorts `v`, unstably, in O(n log n) whatever the input (an IdP's object may have many members): a
/// fraction of the code `sort_unstable` instantiates in the module.
pub(crate) fn heapsort<T: Ord>(v: &mut [T]) {
    // Moves `v[node]` down the max-heap `v[..end]` until neither child is greater.
    fn sift_down<T: Ord>(v: &mut [T], mut node: usize, end: usize) {
        loop {
            let mut child = 2 * node + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[node] >= v[child] {
                return;
            }
            v.swap(node, child);
            node = child;
        }
    }
    for node in (0..v.len() / 2).rev() {
        sift_down(v, node, v.len());
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

impl IntoIterator for Object {
    type Item = (String, Value);
    type IntoIter = alloc::vec::IntoIter<(String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Object {
        Object(iter.into_iter().collect())
    }
}

/// Writes `s` as a JSON string, quotes included.
pub fn write_string<W: fmt::Write>(out: &mut W, s: &str) -> fmt::Result {
    out.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c < ' ' => write!(out, "\\u{:04x}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// A JSON object of string members, in the order given: `{"error":"forbidden"}`.
pub fn object_of_strings(members: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write_string(&mut out, name);
        out.push(':');
        let _ = write_string(&mut out, value);
    }
    out.push('}');
    out
}

/// Compact JSON.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Value::Number(n) => f.write_str(n.as_str()),
            Value::String(s) => write_string(f, s),
            Value::Array(a) => {
                f.write_char('[')?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    v.fmt(f)?;
                }
                f.write_char(']')
            }
            Value::Object(o) => {
                f.write_char('{')?;
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, k)?;
                    f.write_char(':')?;
                    v.fmt(f)?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Test helpers: fixtures are built with `serde_json::json!` and read back with this parser.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Object, Value, parse};

    /// The same document, as our `Value`.
    pub(crate) fn from_serde(v: &serde_json::Value) -> Value {
        parse(v.to_string().as_bytes()).unwrap()
    }

    /// The same object, as our `Object`.
    pub(crate) fn object(v: &serde_json::Value) -> Object {
        match from_serde(v) {
            Value::Object(o) => o,
            other => panic!("not an object: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Value {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn bad(s: &[u8]) -> Error {
        match parse(s) {
            Ok(v) => panic!("{:?} parsed as {v}", String::from_utf8_lossy(s)),
            Err(e) => e,
        }
    }

    fn num(s: &str) -> Number {
        match ok(s) {
            Value::Number(n) => n,
            other => panic!("{s}: {other}"),
        }
    }

    const RFC8259_OBJECT: &str = r#"{
      "Image": {
          "Width":  800,
          "Height": 600,
          "Title":  "View from 15th Floor",
          "Thumbnail": {
              "Url":    "http://www.example.com/image/481989943",
              "Height": 125,
              "Width":  100
          },
          "Animated" : false,
          "IDs": [116, 943, 234, 38793]
        }
    }"#;

    const RFC8259_ARRAY: &str = r#"[
      {
         "precision": "zip",
         "Latitude":  37.7668,
         "Longitude": -122.3959,
         "Address":   "",
         "City":      "SAN FRANCISCO",
         "State":     "CA",
         "Zip":       "94107",
         "Country":   "US"
      },
      {
         "precision": "zip",
         "Latitude":  37.371991,
         "Longitude": -122.026020,
         "Address":   "",
         "City":      "SUNNYVALE",
         "State":     "CA",
         "Zip":       "94085",
         "Country":   "US"
      }
    ]"#;

    #[test]
    fn rfc8259_examples() {
        let v = ok(RFC8259_OBJECT);
        let image = v.get("Image").unwrap();
        assert_eq!(image.get("Width").and_then(Value::as_u64), Some(800));
        assert_eq!(
            image.get("Title").and_then(Value::as_str),
            Some("View from 15th Floor")
        );
        assert_eq!(image.get("Animated").and_then(Value::as_bool), Some(false));
        assert_eq!(
            image.get("Thumbnail").and_then(|t| t.get("Height")),
            Some(&ok("125"))
        );
        let ids: Vec<u64> = image
            .get("IDs")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(ids, [116, 943, 234, 38793]);
        // Members stay in document order.
        let keys: Vec<&str> = image.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["Width", "Height", "Title", "Thumbnail", "Animated", "IDs"]
        );

        let places = ok(RFC8259_ARRAY);
        let places = places.as_array().unwrap();
        assert_eq!(places.len(), 2);
        assert_eq!(
            places[1]
                .get("Longitude")
                .and_then(Value::as_number)
                .map(Number::as_str),
            Some("-122.026020")
        );
        assert_eq!(places[0].get("Address").and_then(Value::as_str), Some(""));

        // Scalars are documents too (RFC 8259 2), with whitespace around them.
        assert_eq!(ok("\"Hello world!\""), Value::String("Hello world!".into()));
        assert_eq!(ok(" 42 ").as_u64(), Some(42));
        assert_eq!(ok("\ttrue\r\n"), Value::Bool(true));
        assert_eq!(ok("null"), Value::Null);
        assert_eq!(ok("[]"), Value::Array(Vec::new()));
        assert_eq!(ok("{}"), Value::Object(Object::new()));
        assert_eq!(
            ok("[ 1 , [ ] , { } , \"\" ]").as_array().map(Vec::len),
            Some(4)
        );
    }

    #[test]
    fn agrees_with_serde_json_on_valid_documents() {
        for doc in [
            RFC8259_OBJECT,
            RFC8259_ARRAY,
            include_str!("../../testdata/jwks/keys.json"),
            include_str!("../../testdata/discovery/good.json"),
        ] {
            let ours = ok(doc);
            let theirs: serde_json::Value = serde_json::from_str(doc).unwrap();
            let again: serde_json::Value = serde_json::from_str(&ours.to_string()).unwrap();
            assert_eq!(again, theirs);
            assert_eq!(ok(&ours.to_string()), ours, "writes what it reads");
        }
    }

    #[test]
    fn refuses_every_kind_of_invalid_input() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "unexpected end"),
            (b"  \n ", "unexpected end"),
            (b"[1,]", "expected a value"),
            (b"[1 2]", "expected `,` or `]`"),
            (b"[,1]", "expected a value"),
            (b"[1,,2]", "expected a value"),
            (b"{\"a\":1,}", "expected a member name"),
            (b"{\"a\":1 \"b\":2}", "expected `,` or `}`"),
            (b"{\"a\" 1}", "expected `:`"),
            (b"{\"a\"}", "expected `:`"),
            (b"{\"a\":}", "expected a value"),
            (b"{a:1}", "expected a member name"),
            (b"{'a':1}", "expected a member name"),
            (b"{1:2}", "expected a member name"),
            (b"['a']", "expected a value"),
            (b"[1] // comment", "trailing characters"),
            (b"/* c */ 1", "expected a value"),
            (b"[1 /* c */]", "expected `,` or `]`"),
            (b"# c\n1", "expected a value"),
            (b"{}{}", "trailing characters"),
            (b"1 2", "trailing characters"),
            (b"\"a\" x", "trailing characters"),
            (b"\xef\xbb\xbf{}", "expected a value"),
            (b"01", "leading zero"),
            (b"-01", "leading zero"),
            (b"00", "leading zero"),
            (b"[007]", "leading zero"),
            (b"-", "invalid number"),
            (b"--1", "invalid number"),
            (b"+1", "expected a value"),
            (b".5", "expected a value"),
            (b"1.", "invalid number"),
            (b"1.e5", "invalid number"),
            (b"1e", "invalid number"),
            (b"1e+", "invalid number"),
            (b"1E-", "invalid number"),
            (b"0x10", "trailing characters"),
            (b"1.5.5", "trailing characters"),
            (b"NaN", "expected a value"),
            (b"Infinity", "expected a value"),
            (b"-Infinity", "invalid number"),
            (b"tru", "expected a value"),
            (b"nul", "expected a value"),
            (b"True", "expected a value"),
            (b"falsey", "trailing characters"),
            (b"\"abc", "unterminated string"),
            (b"\"abc\\", "invalid escape"),
            (b"\"a\nb\"", "control character in string"),
            (b"\"a\tb\"", "control character in string"),
            (b"\"a\x00b\"", "control character in string"),
            (b"\"\x1f\"", "control character in string"),
            (b"\"\\x41\"", "invalid escape"),
            (b"\"\\a\"", "invalid escape"),
            (b"\"\\'\"", "invalid escape"),
            (b"\"\\u12\"", "invalid \\u escape"),
            (b"\"\\u12G4\"", "invalid \\u escape"),
            (b"\"\\U0041\"", "invalid escape"),
            (b"\"\\ud800\"", "lone surrogate"),
            (b"\"\\ud800x\"", "lone surrogate"),
            (b"\"\\ud800\\n\"", "lone surrogate"),
            (b"\"\\ud800\\u0041\"", "lone surrogate"),
            (b"\"\\ud800\\ud800\"", "lone surrogate"),
            (b"\"\\udc00\"", "lone surrogate"),
            (b"\"\\udfff\\ud800\"", "lone surrogate"),
            (b"\"\xff\"", "invalid UTF-8 in string"),
            (b"\"\xc3\"", "invalid UTF-8 in string"),
            (b"\"\xc3\\n\xa9\"", "invalid UTF-8 in string"),
            (b"\"\xed\xa0\x80\"", "invalid UTF-8 in string"),
            (b"\"\xc0\xaf\"", "invalid UTF-8 in string"),
            (b"[", "unexpected end"),
            (b"[1", "expected `,` or `]`"),
            (b"{", "expected a member name"),
            (b"{\"a\":1", "expected `,` or `}`"),
            (b"]", "expected a value"),
            (b"}", "expected a value"),
            (b"\xc3\xa9", "expected a value"),
        ];
        for (input, reason) in cases {
            let e = bad(input);
            assert_eq!(e.reason, *reason, "{:?}", String::from_utf8_lossy(input));
            assert!(e.offset <= input.len());
        }
    }

    #[test]
    fn errors_say_where() {
        let e = bad(b"{\n  \"a\": [1,\n  ]\n}");
        assert_eq!(e.to_string(), "expected a value at byte 15");
        assert_eq!(e.line_col(b"{\n  \"a\": [1,\n  ]\n}"), (3, 3));
        assert_eq!(bad(b"").line_col(b""), (1, 1));
        assert_eq!(bad(b"{").line_col(b"{"), (1, 2));
    }

    #[test]
    fn deep_nesting_is_refused() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let nest = |n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
            assert!(parse(nest(MAX_DEPTH).as_bytes()).is_ok());
            assert_eq!(
                bad(nest(MAX_DEPTH + 1).as_bytes()).reason,
                "nested too deeply"
            );
        }
        // Far deeper than any stack would take, unclosed or closed: refused at the limit, not by a crash.
        assert_eq!(
            bad("[".repeat(1_000_000).as_bytes()).reason,
            "nested too deeply"
        );
        let mixed = "[{\"a\":".repeat(100_000);
        assert_eq!(bad(mixed.as_bytes()).reason, "nested too deeply");
        // Long but flat is fine.
        let flat = format!("[{}1]", "1,".repeat(100_000));
        assert_eq!(ok(&flat).as_array().map(Vec::len), Some(100_001));
    }

    #[test]
    fn numbers_are_exact() {
        assert_eq!(ok("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(ok("18446744073709551616").as_u64(), None);
        assert_eq!(ok("-9223372036854775808").as_i64(), Some(i64::MIN));
        assert_eq!(ok("-9223372036854775809").as_i64(), None);
        assert_eq!(ok("9223372036854775807").as_i64(), Some(i64::MAX));
        assert_eq!(ok("-1").as_u64(), None);
        assert_eq!(ok("-1").as_i64(), Some(-1));
        assert_eq!(ok("-0").as_i64(), Some(0));
        assert_eq!(ok("1.0").as_u64(), None, "an integer is written as one");
        assert_eq!(ok("1e3").as_u64(), None);
        assert_eq!(ok("\"1\"").as_u64(), None);
        // Any size parses; the literal is kept as written.
        let huge = format!("{}.5e-7", "9".repeat(400));
        assert_eq!(num(&huge).as_str(), huge);
        assert_eq!(num("1E+400").as_str(), "1E+400");
        assert_eq!(num("-0.0e-0").as_str(), "-0.0e-0");
    }

    #[test]
    fn whole_parts_of_numeric_dates() {
        let floor = |s: &str| num(s).floor_u64();
        assert_eq!(floor("1900000000"), Some(1_900_000_000));
        assert_eq!(floor("1900003600.5"), Some(1_900_003_600));
        assert_eq!(floor("1900000000.999999999999"), Some(1_900_000_000));
        assert_eq!(floor("1.9e9"), Some(1_900_000_000));
        assert_eq!(floor("19E+8"), Some(1_900_000_000));
        assert_eq!(floor("190000000000e-2"), Some(1_900_000_000));
        assert_eq!(floor("0.5"), Some(0));
        assert_eq!(floor("0"), Some(0));
        assert_eq!(floor("-0"), Some(0));
        assert_eq!(floor("-0.0"), Some(0));
        assert_eq!(floor("0e999999"), Some(0));
        assert_eq!(floor("5e-999999999999999999"), Some(0));
        assert_eq!(floor("5e+999999999999999999"), Some(u64::MAX));
        assert_eq!(floor("-5e-999999999999999999"), None);
        assert_eq!(floor("5e-99999"), Some(0));
        assert_eq!(floor("-0.5"), None);
        assert_eq!(floor("-1"), None);
        assert_eq!(floor("-1e-9"), None);
        assert_eq!(floor("18446744073709551615"), Some(u64::MAX));
        assert_eq!(floor("18446744073709551616"), Some(u64::MAX));
        assert_eq!(floor("1e20"), Some(u64::MAX));
        assert_eq!(floor("1e400"), Some(u64::MAX));
        assert_eq!(floor("1e999999"), Some(u64::MAX));
        // An exponent past u32 (wasm32's usize) too.
        assert_eq!(floor("1e4294967296"), Some(u64::MAX));
    }

    #[test]
    fn numbers_equal_by_value() {
        let same = [
            ("3", "3.0"),
            ("3", "30e-1"),
            ("3", "0.3E1"),
            ("0", "-0"),
            ("0", "0.000e5"),
            ("120", "1.2e2"),
            ("-1.5", "-15e-1"),
            ("1e999999", "10e999998"),
        ];
        for (a, b) in same {
            assert_eq!(num(a), num(b), "{a} = {b}");
            assert_eq!(ok(&format!("[{a}]")), ok(&format!("[{b}]")));
        }
        let different = [
            ("3", "4"),
            ("3", "-3"),
            ("3", "3.0000000000000000000001"),
            ("1", "\"1\""),
            ("1e-999999999999999999", "2e-999999999999999999"),
            ("18446744073709551616", "18446744073709551617"),
        ];
        for (a, b) in different {
            assert_ne!(ok(a), ok(b), "{a} != {b}");
        }
        assert_eq!(
            num("1e-999999999999999999"),
            num("1e-999999999999999999"),
            "beyond counting, the same literal"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            ok(r#""\" \\ \/ \b \f \n \r \t""#).as_str(),
            Some("\" \\ / \u{8} \u{c} \n \r \t")
        );
        assert_eq!(ok(r#""\u0041\u00e9\u00E9\u20ac""#).as_str(), Some("Aéé€"));
        assert_eq!(ok(r#""\u0000""#).as_str(), Some("\0"));
        assert_eq!(ok(r#""\ud83d\ude00""#).as_str(), Some("😀"));
        assert_eq!(ok(r#""\uD834\uDD1E""#).as_str(), Some("𝄞"));
        assert_eq!(ok(r#""\uffff""#).as_str(), Some("\u{ffff}"));
        assert_eq!(ok("\"é😀 raw\u{7f}\"").as_str(), Some("é😀 raw\u{7f}"));
        assert_eq!(ok(r#"{"\u0061":1}"#).get("a"), Some(&ok("1")));

        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\n\r\t\u{0}\u{1f}\u{8}é😀</").unwrap();
        assert_eq!(out, r#""a\"b\\c\n\r\t\u0000\u001f\u0008é😀</""#);
        assert_eq!(
            ok(&out).as_str(),
            Some("a\"b\\c\n\r\t\u{0}\u{1f}\u{8}é😀</")
        );
    }

    #[test]
    fn heapsort_sorts() {
        // Lists of every length below 40, many repeats among them, against `sort`.
        let mut seed = 1u32;
        for len in 0..40 {
            for _ in 0..50 {
                let v: Vec<u32> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (seed >> 16) % (len as u32 / 2 + 1)
                    })
                    .collect();
                let mut ours = v.clone();
                heapsort(&mut ours);
                let mut want = v;
                want.sort();
                assert_eq!(ours, want);
            }
        }
        let mut names = ["b", "a", "c", "a", ""];
        heapsort(&mut names);
        assert_eq!(names, ["", "a", "a", "b", "c"]);
    }

    #[test]
    fn duplicates_are_kept_and_reported() {
        let v = ok(r#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 3}"#);
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(o.get("a"), Some(&ok("3")), "the last one");
        assert_eq!(o.duplicate(), Some("a"));
        assert_eq!(v.find_duplicate(), Some("a"));
        let nested = ok(r#"[{"x": {"c": 1, "c": 2}}]"#);
        assert_eq!(nested.find_duplicate(), Some("c"));
        assert_eq!(
            nested.as_array().unwrap()[0]
                .as_object()
                .unwrap()
                .duplicate(),
            None
        );
        assert_eq!(ok(RFC8259_OBJECT).find_duplicate(), None);
        assert_eq!(ok(r#"{"a": 1, "A": 2}"#).find_duplicate(), None);
        // An empty name too (found by mutation testing).
        assert_eq!(ok(r#"{"": 1, "b": 2, "": 3}"#).find_duplicate(), Some(""));

        let mut o = o.clone();
        assert_eq!(o.remove("a"), Some(ok("3")));
        assert!(!o.contains_key("a"));
        assert_eq!(o.remove("a"), None);
        o.insert("b".into(), Value::Null);
        o.insert("z".into(), Value::Bool(true));
        assert_eq!(o.keys().collect::<Vec<_>>(), ["b", "z"]);
        assert_eq!(Value::Object(o).to_string(), r#"{"b":null,"z":true}"#);
    }

    #[test]
    fn writes_objects_of_strings() {
        assert_eq!(
            object_of_strings(&[
                ("error", "forbidden"),
                ("user", "a\"<b>"),
                ("logout", "/logout")
            ]),
            r#"{"error":"forbidden","user":"a\"<b>","logout":"/logout"}"#
        );
        assert_eq!(object_of_strings(&[]), "{}");
    }

    #[test]
    fn parse_object_wants_an_object() {
        assert!(parse_object(b" {\"a\": [1]} ").is_ok());
        for other in [&b"[]"[..], b"1", b"\"{}\"", b"null", b"{"] {
            assert!(parse_object(other).is_err());
        }
    }

    /// Every truncation and many one-byte mutations of real documents: no panic, and the same verdict as
    /// serde_json (whose only differences are its deeper nesting limit and refusing numbers beyond `f64`).
    #[test]
    fn no_panic_sweep_agrees_with_serde_json() {
        let docs: Vec<Vec<u8>> = vec![
            RFC8259_OBJECT.into(),
            RFC8259_ARRAY.into(),
            br#"{"s":"\u00e9\ud83d\ude00\n\"x","n":[-0,1.5e-3,10E+2,0.0],"t":true,"f":false,"z":null}"#.to_vec(),
            include_bytes!("../../testdata/discovery/good.json").to_vec(),
            "[\"é😀\", {\"\": []}]".into(),
        ];
        const BYTES: &[u8] = b"\0\t\n \"',-./0123456789:E[\\]eflnrtu{}\x7f\x80\xbf\xc3\xed\xff";
        let mut checked = 0;
        let mut check = |input: &[u8]| {
            let ours = parse(input);
            if let Err(e) = &ours {
                assert!(e.offset <= input.len());
                let _ = e.line_col(input);
            }
            let theirs = serde_json::from_slice::<serde_json::Value>(input);
            if theirs
                .as_ref()
                .is_err_and(|e| e.to_string().starts_with("number out of range"))
            {
                // `3E793`: a number to us, beyond `f64` to serde_json.
                assert!(ours.is_ok(), "{:?}", String::from_utf8_lossy(input));
                return;
            }
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{:?}: ours {:?}, serde_json {:?}",
                String::from_utf8_lossy(input),
                ours.as_ref().err(),
                theirs.as_ref().err()
            );
            if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                let again: serde_json::Value = serde_json::from_str(&ours.to_string()).unwrap();
                assert_eq!(again, theirs);
            }
            checked += 1;
        };
        for doc in &docs {
            let doc = doc.as_slice();
            for end in 0..=doc.len() {
                check(&doc[..end]);
                check(&doc[end..]);
            }
            for i in 0..doc.len() {
                let mut m = doc.to_vec();
                m.remove(i);
                check(&m);
                let mut m = doc.to_vec();
                m.insert(i, doc[i]);
                check(&m);
                for &b in BYTES {
                    let mut m = doc.to_vec();
                    m[i] = b;
                    check(&m);
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }

    /// Found by mutation testing: the last high surrogate, `\uDBFF`, starts a pair like the others
    /// (U+10FFFF, the last code point), and the first pair gives U+10000.
    #[test]
    fn surrogate_pairs_at_the_ends_of_the_range() {
        assert_eq!(ok(r#""\udbff\udfff""#).as_str(), Some("\u{10ffff}"));
        assert_eq!(ok(r#""\uDBFF\uDC00""#).as_str(), Some("\u{10fc00}"));
        assert_eq!(ok(r#""\ud800\udc00""#).as_str(), Some("\u{10000}"));
        assert_eq!(bad(br#""\udbff""#).reason, "lone surrogate");
    }

    /// Found by mutation testing: an exponent takes one sign at most (RFC 8259: `e [ minus / plus ] 1*DIGIT`).
    #[test]
    fn an_exponent_has_one_sign() {
        for input in [&b"1e+-5"[..], b"1E-+5", b"1e++5", b"1e--5", b"[2E+-1]"] {
            assert_eq!(
                bad(input).reason,
                "invalid number",
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(num("1e+5"), num("100000"));
        assert_eq!(num("1e-5"), num("0.00001"));
    }

    #[test]
    fn nesting_stops_at_64() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let nest = |n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
            assert!(parse(nest(64).as_bytes()).is_ok());
            assert_eq!(bad(nest(65).as_bytes()).reason, "nested too deeply");
        }
    }

    #[test]
    fn numbers_beyond_the_exponent_limit_are_equal_only_as_literals() {
        // 2^40 = 1099511627776, the last exponent counted exactly.
        assert_eq!(num("1e1099511627776"), num("10e1099511627775"));
        assert_ne!(ok("1e2000000000000"), ok("1e3000000000000"));
    }
}
