//! Splitting text into chunks that fit an embedding model and still read as prose.

/// How chunks are cut.
#[derive(Clone, Copy, Debug)]
pub struct ChunkSpec {
    /// Largest chunk, in characters.
    pub max_chars: usize,
    /// Characters of the previous chunk repeated at the start of the next (whole sentences).
    pub overlap_chars: usize,
}

impl Default for ChunkSpec {
    fn default() -> Self {
        Self {
            max_chars: 1000,
            overlap_chars: 150,
        }
    }
}

/// Splits `text` into chunks of at most `spec.max_chars` characters. Cuts fall between paragraphs
/// or sentences where possible (a sentence longer than a chunk is cut between words, a word
/// longer than a chunk between characters); each chunk after the first starts with the last
/// sentences of the previous one, up to `spec.overlap_chars`. Whitespace-only text has no chunks.
pub fn split(text: &str, spec: ChunkSpec) -> Vec<String> {
    let max = spec.max_chars.max(16);
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if text.chars().count() <= max {
        return vec![text.to_owned()];
    }
    let units: Vec<String> = sentences(text)
        .into_iter()
        .flat_map(|s| fit(&s, max))
        .collect();
    let mut chunks: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut len = 0;
    for unit in &units {
        let unit_len = unit.chars().count();
        if len > 0 && len + 1 + unit_len > max {
            chunks.push(current.join(" "));
            // Carry whole trailing sentences as overlap, if they leave room for this unit.
            let mut carried: Vec<&str> = Vec::new();
            let mut carried_len = 0;
            for prev in current.iter().rev() {
                let l = prev.chars().count();
                if carried_len + l + 1 > spec.overlap_chars || carried_len + l + 1 + unit_len > max
                {
                    break;
                }
                carried.insert(0, prev);
                carried_len += l + 1;
            }
            current = carried;
            len = carried_len.saturating_sub(1);
        }
        len += if current.is_empty() {
            unit_len
        } else {
            unit_len + 1
        };
        current.push(unit);
    }
    if !current.is_empty() {
        chunks.push(current.join(" "));
    }
    chunks
}

/// Sentences (and paragraph ends), whitespace-normalized.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut current = String::new();
        let mut chars = paragraph.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_whitespace() {
                if !current.is_empty() && !current.ends_with(' ') {
                    current.push(' ');
                }
                continue;
            }
            current.push(c);
            let ends = matches!(c, '.' | '!' | '?' | '。' | '！' | '？')
                && chars.peek().is_none_or(|n| n.is_whitespace());
            if ends {
                out.push(current.trim().to_owned());
                current.clear();
            }
        }
        if !current.trim().is_empty() {
            out.push(current.trim().to_owned());
        }
    }
    out
}

/// A sentence cut to at most `max` characters per piece, between words where possible.
fn fit(sentence: &str, max: usize) -> Vec<String> {
    if sentence.chars().count() <= max {
        return vec![sentence.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for word in sentence.split(' ') {
        let mut word = word.to_owned();
        while word.chars().count() > max {
            let head: String = word.chars().take(max).collect();
            word = word.chars().skip(max).collect();
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            out.push(head);
        }
        let needed = if current.is_empty() {
            word.chars().count()
        } else {
            current.chars().count() + 1 + word.chars().count()
        };
        if needed > max {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: ChunkSpec = ChunkSpec {
        max_chars: 60,
        overlap_chars: 25,
    };

    #[test]
    fn short_text_is_one_chunk_and_blank_text_none() {
        assert_eq!(split("  Hello there.  ", SPEC), vec!["Hello there."]);
        assert!(split(" \n\t ", SPEC).is_empty());
    }

    #[test]
    fn long_text_is_cut_between_sentences_with_overlap() {
        let text = "The parcel arrived late. The box was dented. The customer asked for a refund. \
                    Support approved it. The courier was informed.";
        let chunks = split(text, SPEC);
        assert!(chunks.len() >= 2, "{chunks:?}");
        for c in &chunks {
            assert!(c.chars().count() <= 60, "{c:?}");
            assert!(c.ends_with('.'), "cut inside a sentence: {c:?}");
        }
        // Where the overlap fits, a chunk starts with the previous chunk's last sentence.
        let first_sentence = |c: &str| {
            c.split_inclusive(". ")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        assert!(
            chunks
                .windows(2)
                .any(|p| p[0].ends_with(&first_sentence(&p[1]))),
            "no overlap in {chunks:?}"
        );
        // Nothing is lost.
        for s in ["arrived late", "dented", "refund", "approved", "courier"] {
            assert!(chunks.iter().any(|c| c.contains(s)), "{s}");
        }
    }

    #[test]
    fn overlong_sentences_and_words_are_cut_and_unicode_is_safe() {
        let word = "ü".repeat(150);
        let text = format!("{word} tail words here and more words to fill the line up");
        let chunks = split(&text, SPEC);
        assert!(chunks.iter().all(|c| c.chars().count() <= 60), "{chunks:?}");
        assert_eq!(chunks.concat().matches('ü').count(), 150);
    }
}
