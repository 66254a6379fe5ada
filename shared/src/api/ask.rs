//! `POST /v1/ask`: a question answered from the tenant's own rows, with citations to the exact
//! record versions the answer rests on.

use std::collections::HashMap;

use http::StatusCode;
use lambda_http::Request;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::datasets::find_dataset;
use crate::App;
use crate::analytics::datasets::{self, DatasetRef};
use crate::db::Access;
use crate::http::{ApiError, HandlerFuture, RequestCtx, json_body, json_response};
use crate::rag::answer::{NO_ANSWER, Source, police};
use crate::rag::search::{embed_question, search};

const MAX_QUESTION_CHARS: usize = 2000;
const MAX_K: usize = 20;
const SNIPPET_CHARS: usize = 300;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskRequest {
    question: String,
    #[serde(default)]
    datasets: Vec<String>,
    #[serde(default)]
    k: Option<usize>,
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

pub(super) fn ask<'a>(app: &'a App, ctx: &'a RequestCtx, req: &'a Request) -> HandlerFuture<'a> {
    Box::pin(async move {
        let body: AskRequest = json_body(req)?;
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
        let mut tx = super::begin(app, ctx, Access::ReadOnly).await?;
        let mut names: HashMap<Uuid, String> = HashMap::new();
        let filter = if body.datasets.is_empty() {
            for ds in datasets::list(&mut tx).await? {
                names.insert(ds.id, ds.name);
            }
            None
        } else {
            let mut ids = Vec::new();
            for d in &body.datasets {
                let r = DatasetRef::parse(d).ok_or_else(super::datasets::dataset_not_found)?;
                let ds = find_dataset(&mut tx, &r).await?;
                ids.push(ds.id);
                names.insert(ds.id, ds.name);
            }
            Some(ids)
        };
        let hits = search(&mut tx, question, &vector, k, filter.as_deref()).await?;
        tx.commit().await?;

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
                    dataset: names.get(&h.dataset_id).cloned().unwrap_or_default(),
                    record_key: h.record_key.clone(),
                    record_version: h.record_version,
                    snippet: h.content.chars().take(SNIPPET_CHARS).collect(),
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
        json_response(
            StatusCode::OK,
            &Answer {
                answer,
                citations,
                model: draft.model,
                retrieval: Retrieval {
                    k,
                    candidates: hits.len(),
                    exact: true,
                    embedder: app.embedder.model(),
                },
                dropped_citations: policed.dropped,
            },
        )
    })
}
