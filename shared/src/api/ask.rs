//! `POST /v1/ask`: a question answered from the tenant's own rows, with citations to the exact
//! record versions the answer rests on.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::datasets::find_dataset;
use crate::App;
use crate::analytics::datasets::DatasetRef;
use crate::analytics::query::{Filter, compile_filter};
use crate::db::{Access, TxSettings};
use crate::http::{ApiError, Caller, HandlerResult, Json, json_response};
use crate::rag::answer::{NO_ANSWER, Source, police, strip_active_content};
use crate::rag::search::{SearchRequest, embed_question, search};
use crate::usage::Meter;

const MAX_QUESTION_CHARS: usize = 2000;
const MAX_K: usize = 20;
const SNIPPET_CHARS: usize = 300;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AskRequest {
    question: String,
    #[serde(default)]
    datasets: Vec<String>,
    #[serde(default)]
    k: Option<usize>,
    /// A filter in the query language's grammar, on the columns of the one dataset named.
    #[serde(default)]
    filters: Option<Filter>,
}

#[derive(Serialize)]
struct Citation {
    label: String,
    dataset: String,
    record_key: String,
    record_version: i32,
    snippet: String,
    score: f64,
}

#[derive(Serialize)]
struct Retrieval<'a> {
    k: usize,
    candidates: usize,
    exact: bool,
    embedder: &'a str,
}

#[derive(Serialize)]
struct Answer<'a> {
    answer: String,
    citations: Vec<Citation>,
    model: String,
    retrieval: Retrieval<'a>,
    dropped_citations: usize,
}

pub(super) async fn ask(
    State(app): State<Arc<App>>,
    caller: Caller,
    Json(body): Json<AskRequest>,
) -> HandlerResult {
    let question = body.question.trim();
    if question.is_empty()
        || question.chars().count() > MAX_QUESTION_CHARS
        || question.contains('\0')
    {
        return Err(ApiError::bad_request(
            "invalid_question",
            format!("Ask a question of 1 to {MAX_QUESTION_CHARS} characters."),
        ));
    }
    let k = body.k.unwrap_or(5);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::bad_request(
            "invalid_k",
            format!("k is between 1 and {MAX_K}."),
        ));
    }

    // Embed before the transaction: no connection waits in a transaction on the model.
    let vector = embed_question(app.embedder.as_ref(), question)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "embedding_unavailable",
                "Embedding the question is temporarily unavailable; retry shortly.",
            )
            .with_source(e)
        })?;
    if body.filters.is_some() && body.datasets.len() != 1 {
        return Err(ApiError::bad_request(
            "filters_need_one_dataset",
            "filters name columns, so they need exactly one dataset in datasets.",
        ));
    }
    let settings = TxSettings {
        hnsw_ef_search: Some(app.config.rag.hnsw_ef_search),
        ..TxSettings::default()
    };
    let mut tx = super::begin_with(&app, &caller, Access::ReadOnly, settings).await?;
    let mut ids = Vec::new();
    let mut filter = None;
    for d in &body.datasets {
        let r = DatasetRef::parse(d).ok_or_else(super::datasets::dataset_not_found)?;
        let ds = find_dataset(&mut tx, &r).await?;
        if let Some(f) = &body.filters {
            let compiled = compile_filter(f, &ds, "/filters").map_err(|errors| {
                ApiError::bad_request(
                    "invalid_filters",
                    "The filters do not fit the dataset; see errors.",
                )
                .with_extra(json!({ "errors": errors }))
            })?;
            filter = Some(compiled);
        }
        ids.push(ds.id);
    }
    let request = SearchRequest {
        question,
        vector: &vector,
        k,
        datasets: (!ids.is_empty()).then_some(&ids[..]),
        filter: filter.as_ref(),
        exact_max_chunks: app.config.rag.exact_max_chunks,
    };
    let retrieved = search(&mut tx, &request).await?;
    tx.commit().await?;
    let hits = &retrieved.hits;

    let sources: Vec<Source> = hits
        .iter()
        .enumerate()
        .map(|(i, h)| Source {
            label: format!("S{}", i + 1),
            text: h.content.clone(),
        })
        .collect();
    let draft = app.answerer.answer(question, &sources).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "answer_unavailable",
            "Answering is temporarily unavailable; retry shortly.",
        )
        .with_source(e)
    })?;
    let policed = police(&draft, &sources);
    let citations: Vec<Citation> = policed
        .labels
        .iter()
        .filter_map(|label| {
            let i: usize = label.trim_start_matches('S').parse().ok()?;
            let h = hits.get(i.checked_sub(1)?)?;
            Some(Citation {
                label: label.clone(),
                dataset: h.dataset.clone(),
                record_key: h.record_key.clone(),
                record_version: h.record_version,
                snippet: strip_active_content(&h.content)
                    .chars()
                    .take(SNIPPET_CHARS)
                    .collect(),
                score: h.score,
            })
        })
        .collect();
    // An answer with nothing left to stand on is no answer.
    let answer = if citations.is_empty() {
        NO_ANSWER.to_owned()
    } else {
        policed.text
    };
    super::meter(&app, &caller, Meter::Questions, 1, "api:ask").await?;
    json_response(
        StatusCode::OK,
        &Answer {
            answer,
            citations,
            model: draft.model,
            retrieval: Retrieval {
                k,
                candidates: retrieved.candidates,
                exact: retrieved.exact,
                embedder: app.embedder.model(),
            },
            dropped_citations: policed.dropped,
        },
    )
}
