//! Parsing a TOML text into a schema type while keeping the position of every key, so
//! that both serde errors and later semantic problems point at file:line:col.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::error::{ConfigError, Diagnostic, KeyPath, Problem};

/// Where one key of the document sits in the text.
#[derive(Debug, Clone)]
struct Entry {
    path: KeyPath,
    /// The value is a table (header, inline, or an element of an array of tables).
    table: bool,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

/// An index from key paths to byte spans (and back) for one parsed text.
#[derive(Debug, Clone)]
pub(crate) struct SourceIndex {
    name: String,
    line_starts: Vec<usize>,
    text: String,
    entries: Vec<Entry>,
}

impl SourceIndex {
    fn new(name: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name: name.to_owned(),
            line_starts,
            text: text.to_owned(),
            entries: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    fn index_table(&mut self, table: &dyn TableLike, path: &KeyPath) {
        for (k, item) in table.iter() {
            let key_span = table.get_key_value(k).and_then(|(key, _)| key.span());
            self.index_item(item, path.key(k), key_span);
        }
    }

    fn index_item(&mut self, item: &Item, path: KeyPath, key: Option<Range<usize>>) {
        self.entries.push(Entry {
            path: path.clone(),
            table: item.is_table_like(),
            key,
            value: item.span(),
        });
        match item {
            Item::Table(t) => self.index_table(t, &path),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = path.index(i);
                    self.entries.push(Entry {
                        path: p.clone(),
                        table: true,
                        key: None,
                        value: t.span(),
                    });
                    self.index_table(t, &p);
                }
            }
            Item::Value(v) => self.index_value(v, &path),
            Item::None => {}
        }
    }

    fn index_value(&mut self, value: &Value, path: &KeyPath) {
        match value {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let p = path.index(i);
                    self.entries.push(Entry {
                        path: p.clone(),
                        table: v.is_inline_table(),
                        key: None,
                        value: v.span(),
                    });
                    self.index_value(v, &p);
                }
            }
            Value::InlineTable(t) => self.index_table(t, path),
            _ => {}
        }
    }

    /// The key a serde error span is about. serde spans start exactly where the
    /// offending key, value, inline table or `[table]` header starts (a header's span runs
    /// on over its body). A table missing a key is named by its own span: the root's runs
    /// over its leading key/value lines from offset 0 (empty when it has none), so with
    /// `missing` only tables are candidates and the root is the fallback.
    fn path_at(&self, span: &Range<usize>, missing: bool) -> KeyPath {
        if missing && span.is_empty() {
            return KeyPath::root();
        }
        let starts_here =
            |r: &Option<Range<usize>>| r.as_ref().is_some_and(|r| r.start == span.start);
        let contains = |r: &Option<Range<usize>>| {
            r.as_ref()
                .is_some_and(|r| r.start <= span.start && span.start < r.end)
        };
        let deepest = |keep: &dyn Fn(&Entry) -> bool| {
            self.entries
                .iter()
                .filter(|e| keep(e))
                .max_by_key(|e| e.path.0.len())
                .map(|e| e.path.clone())
        };
        if missing {
            return deepest(&|e| e.table && starts_here(&e.value)).unwrap_or_default();
        }
        deepest(&|e| starts_here(&e.key) || starts_here(&e.value))
            .or_else(|| deepest(&|e| contains(&e.key) || contains(&e.value)))
            .unwrap_or_default()
    }

    /// Byte offset of `path` (its value, else its key), or of its nearest present ancestor.
    fn offset_of(&self, path: &KeyPath) -> Option<usize> {
        let mut p = path.clone();
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == p) {
                if let Some(r) = e.value.as_ref().or(e.key.as_ref()) {
                    return Some(r.start);
                }
            }
            if p.is_root() {
                return None;
            }
            p = p.parent();
        }
    }

    /// Gives each problem the position of its key; sorts by position.
    pub(crate) fn diagnose(&self, problems: Vec<Problem>) -> ConfigError {
        let mut diagnostics: Vec<(usize, Diagnostic)> = problems
            .into_iter()
            .map(|p| {
                let offset = self.offset_of(&p.path);
                let position = Some(offset.map_or((1, 1), |o| self.line_col(o)));
                let d = Diagnostic {
                    file: self.name.clone(),
                    position,
                    path: p.path.to_string(),
                    message: p.message,
                };
                (offset.unwrap_or(0), d)
            })
            .collect();
        diagnostics.sort_by_key(|(o, _)| *o);
        ConfigError {
            diagnostics: diagnostics.into_iter().map(|(_, d)| d).collect(),
        }
    }

    fn diagnostic_at(&self, span: Option<Range<usize>>, message: &str) -> ConfigError {
        let offset = span.as_ref().map(|s| s.start);
        let mut message = message.trim_end().to_owned();
        // serde names a missing key in its message; name it in the path instead.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_owned);
        let mut path = span
            .map(|s| self.path_at(&s, missing.is_some()))
            .unwrap_or_default();
        if let Some(key) = missing {
            path = path.key(&key);
            message = "expected this required key, found none".to_owned();
        }
        ConfigError {
            diagnostics: vec![Diagnostic {
                file: self.name.clone(),
                position: offset.map(|o| self.line_col(o)),
                path: path.to_string(),
                message,
            }],
        }
    }
}

/// Parses `text` (named `name` in errors) into `T`, keeping the key index for later
/// semantic diagnostics.
pub(crate) fn parse<T: DeserializeOwned>(
    text: &str,
    name: &str,
) -> Result<(T, SourceIndex), ConfigError> {
    let mut index = SourceIndex::new(name, text);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let detail: Vec<&str> = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let message = format!("invalid TOML: {}", detail.join("; "));
            return Err(index.diagnostic_at(e.span(), &message));
        }
    };
    index.index_table(doc.as_table(), &KeyPath::root());
    match toml::from_str::<T>(text) {
        Ok(value) => Ok((value, index)),
        Err(e) => Err(index.diagnostic_at(e.span(), e.message())),
    }
}
