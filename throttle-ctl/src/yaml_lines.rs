//! Line numbers for YAML paths such as `rules[2].window`, so that errors found after
//! deserialization (bad values, duplicates) still point at the line to fix.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{MarkedEventReceiver, Parser},
    scanner::Marker,
    Event,
};

/// Path (`a.b[3].c`) → 1-based line of the key, or of the item in a sequence.
#[derive(Debug, Default)]
pub struct LineIndex(HashMap<String, usize>);

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        // A syntax error is reported by the deserializer; here we just keep what was indexed.
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        LineIndex(builder.lines)
    }

    /// Line of `path`, or of its nearest indexed ancestor.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.0.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    /// Records a node starting at `line`; returns its path if it is a value (not a map key).
    fn node(&mut self, line: usize, scalar: Option<&str>) -> Option<String> {
        let path = match self.stack.last_mut() {
            None => return Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                p
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => join(path, &k),
                None => {
                    // A key: remember it and record its line for the value's path.
                    let k = scalar.unwrap_or_default().to_string();
                    self.lines.entry(join(path, &k)).or_insert(line);
                    *key = Some(k);
                    return None;
                }
            },
        };
        self.lines.entry(path.clone()).or_insert(line);
        Some(path)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(ref value, ..) => {
                self.node(line, Some(value));
            }
            Event::Alias(_) => {
                self.node(line, None);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(line, None) {
                    self.stack.push(Frame::Map { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.node(line, None) {
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_keys_and_items() {
        let idx = LineIndex::new(
            "a: 1\nrules:\n  - name: x\n    limit: 2\n  - {name: y, limit: 3}\nallow: [1, 2]\n",
        );
        assert_eq!(idx.line_of("a"), Some(1));
        assert_eq!(idx.line_of("rules"), Some(2));
        assert_eq!(idx.line_of("rules[0]"), Some(3));
        assert_eq!(idx.line_of("rules[0].limit"), Some(4));
        assert_eq!(idx.line_of("rules[1].limit"), Some(5));
        assert_eq!(idx.line_of("allow[1]"), Some(6));
        assert_eq!(idx.line_of("rules[0].missing"), Some(3));
        assert_eq!(idx.line_of("nothing"), None);
    }
}
