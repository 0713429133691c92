//! Compiler diagnostics, shared by every phase, and their rendering through miette.
//!
//! Phases produce plain [`Diagnostic`] values (no source text inside) so they can be
//! collected, sorted and tested cheaply; [`Diagnostic::render`] attaches the
//! source files and hands them to miette for the terminal.

use crate::span::{SourceMap, Span};
use std::fmt;
use std::sync::Arc;

/// Lines longer than this are not drawn with their source.
const MAX_RENDERED_LINE: usize = 2000;

/// One error (or warning) with labelled source spans and an optional hint.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable machine-readable code, e.g. `netc::shape_mismatch`.
    pub code: &'static str,
    /// One-line summary.
    pub message: String,
    /// Labelled spans; the first is the primary location.
    pub labels: Vec<(Span, String)>,
    /// What to do about it.
    pub help: Option<String>,
    /// Extra lines of context (e.g. the call stack of blocks being elaborated).
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A diagnostic with a code and a message, no labels yet.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            notes: Vec::new(),
        }
    }

    /// Adds a labelled span.
    pub fn label(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push((span, text.into()));
        self
    }

    /// Sets the hint.
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }

    /// Adds a note line.
    pub fn note(mut self, text: impl Into<String>) -> Self {
        self.notes.push(text.into());
        self
    }

    /// The primary span, if any.
    pub fn primary_span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.0)
    }

    /// Attaches the sources so miette can print it.
    pub fn render(&self, sources: &SourceMap) -> Rendered {
        // miette draws whole lines and cannot pad past 65535 columns; for labels on
        // huge lines (generated or hostile input) print locations instead.
        let long_line = self.labels.iter().any(|(span, _)| {
            let text = &sources.get(span.file).text;
            let at = (span.start as usize).min(text.len());
            let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            end - start > MAX_RENDERED_LINE
        });
        let primary_file = self.labels.first().map(|l| l.0.file);
        let mut labels = Vec::new();
        let mut notes = Vec::new();
        for (span, text) in &self.labels {
            // miette shows one source per report: labels elsewhere become located notes.
            if long_line || Some(span.file) != primary_file {
                notes.push(format!("{}: {text}", sources.location(*span)));
            } else {
                labels.push((*span, text.clone()));
            }
        }
        notes.extend(self.notes.iter().cloned());
        let mut help = self.help.clone();
        if !notes.is_empty() {
            let notes = notes.join("\n");
            help = Some(match help {
                Some(h) => format!("{h}\n{notes}"),
                None => notes,
            });
        }
        Rendered {
            code: self.code,
            message: self.message.clone(),
            help,
            source: match (long_line, primary_file) {
                (false, Some(f)) => Some(sources.named_source(f)),
                _ => None,
            },
            labels,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// A diagnostic with its source attached: implements [`miette::Diagnostic`].
#[derive(Debug)]
pub struct Rendered {
    code: &'static str,
    message: String,
    help: Option<String>,
    source: Option<miette::NamedSource<Arc<str>>>,
    labels: Vec<(Span, String)>,
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(
            |(i, (span, text))| {
                let text = (!text.is_empty()).then(|| text.clone());
                if i == 0 {
                    miette::LabeledSpan::new_primary_with_span(text, *span)
                } else {
                    miette::LabeledSpan::new_with_span(text, *span)
                }
            },
        )))
    }
}

/// Renders diagnostics as plain text (no colours), as tests snapshot them.
pub fn render_plain(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    let mut out = String::new();
    for d in diags {
        let r = d.render(sources);
        let _ = handler.render_report(&mut out, &r);
        out.push('\n');
    }
    out
}

/// The closest candidate to `name` by edit distance, for "did you mean" hints.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.len() / 3).max(1) + 1;
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and adjacent
/// transpositions (optimal string alignment), case-insensitive.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_nearest_name() {
        let names = ["batch_norm", "conv", "linear", "layer_norm"];
        assert_eq!(did_you_mean("batchnorm", names), Some("batch_norm"));
        assert_eq!(did_you_mean("lnear", names), Some("linear"));
        assert_eq!(did_you_mean("softmax", names), None);
        assert_eq!(did_you_mean("rleu", ["relu", "len"]), Some("relu"));
    }
}
