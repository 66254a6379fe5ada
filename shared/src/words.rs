//! Words of English text as the question paths compare them: lowercase, split at anything that is
//! not a letter, digit or `_`, reduced to a crude stem (plural `s`/`es`/`ies` off), with a list of
//! function words that carry no topic. Shared by the local query planner (which maps a
//! question's words to columns and values) and the retrieval path (which checks that what it
//! quotes shares a topic word with the question).

/// The lowercase words of `text`, in order.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A crude English stem: `regions` → `region`, `categories` → `category`, `boxes` → `box`.
pub fn stem(word: &str) -> String {
    let w = word.to_lowercase();
    let n = w.chars().count();
    if n > 4 && w.ends_with("ies") {
        format!("{}y", &w[..w.len() - 3])
    } else if n > 4 && (w.ends_with("xes") || w.ends_with("ches") || w.ends_with("shes")) {
        w[..w.len() - 2].to_owned()
    } else if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        w[..w.len() - 1].to_owned()
    } else {
        w
    }
}

/// Words that say nothing about a topic.
const STOPWORDS: &[&str] = &[
    "a", "about", "all", "an", "and", "any", "are", "as", "at", "be", "been", "by", "can", "could",
    "did", "do", "does", "each", "for", "from", "had", "has", "have", "how", "i", "in", "into",
    "is", "it", "its", "me", "my", "of", "on", "or", "our", "over", "per", "please", "show",
    "tell", "than", "that", "the", "their", "them", "there", "these", "they", "this", "those",
    "to", "us", "was", "we", "were", "what", "when", "where", "which", "who", "whom", "why",
    "will", "with", "would", "you", "your",
];

/// Words that ask for reasons, which the records' text may hold and figures never do.
pub const REASON_WORDS: &[&str] = &[
    "why", "reason", "reasons", "explain", "explains", "cause", "caused", "because",
];

/// Whether `word` (lowercase) is a function word.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.contains(&word)
}

/// The stems of `text`'s topic words (function words left out), each once, in order.
pub fn topic_stems(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        if is_stopword(&w) {
            continue;
        }
        let s = stem(&w);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_fold_plurals_only() {
        for (w, s) in [
            ("regions", "region"),
            ("categories", "category"),
            ("boxes", "box"),
            ("Orders", "order"),
            ("status", "status"),
            ("glass", "glass"),
            ("qty", "qty"),
            ("is", "is"),
            ("sales", "sale"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }

    #[test]
    fn topic_stems_drop_function_words() {
        assert_eq!(
            topic_stems("What was the total revenue by region, per the Orders?"),
            ["total", "revenue", "region", "order"]
        );
        assert_eq!(words("ordered_at: 2026-10"), ["ordered_at", "2026", "10"]);
    }
}
