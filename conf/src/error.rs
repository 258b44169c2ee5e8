//! Configuration errors: one diagnostic per problem, each naming file, line, column,
//! key path, what was expected and what was found.

use std::fmt;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A key in a table, e.g. `luns`.
    Key(String),
    /// An element of an array or array of tables, e.g. `[1]`.
    Index(usize),
}

/// A path from the document root to a key, displayed as `targets[0].luns[1].protection.type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// The empty path (the document root).
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a table key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_owned()));
        p
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    /// The path without its last segment; the root's parent is the root.
    pub fn parent(&self) -> Self {
        let mut p = self.clone();
        p.0.pop();
        p
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Segment::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A semantic problem found by validation, before it is given a position in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key the problem is about.
    pub path: KeyPath,
    /// What was expected and what was found.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }
}

/// One error in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to `load` or `from_str_named`.
    pub file: String,
    /// 1-based line and column (in characters) of the offending key or value, when known.
    pub position: Option<(usize, usize)>,
    /// Key path of the offending key; empty for whole-file problems.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one configuration; displays one diagnostic per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The diagnostics, in file order where positions are known.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error about the whole file (e.g. it cannot be read).
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Self {
            diagnostics: vec![Diagnostic {
                file: file.to_owned(),
                position: None,
                path: String::new(),
                message: message.into(),
            }],
        }
    }

    /// Problems without positions (for configurations built in code).
    pub fn unpositioned(file: &str, problems: Vec<Problem>) -> Self {
        Self {
            diagnostics: problems
                .into_iter()
                .map(|p| Diagnostic {
                    file: file.to_owned(),
                    position: None,
                    path: p.path.to_string(),
                    message: p.message,
                })
                .collect(),
        }
    }
}
