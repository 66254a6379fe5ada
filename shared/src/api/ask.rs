//! `POST /v1/ask`: a question answered from the tenant's own rows.
//!
//! - **About figures** ("total revenue by region last month"): the planner turns the question
//!   into queries in the query language, never SQL; each is compiled by the same code as
//!   `POST /v1/query` (a plan that does not fit is refused, not run) and run read-only in the
//!   tenant's transaction under the query time limit. The answer states the figures, every
//!   number checked to be in the result; the response carries each executed query (re-runnable
//!   with `POST /v1/query`), its result table and, when the figures rest on at most
//!   [`MAX_RECORD_CITATIONS`] records, citations of those records.
//! - **About figures and reasons** ("… and why?"): both, when retrieval finds relevant records.
//! - **About content**: hybrid retrieval and an answer with citations to the exact record
//!   versions, from hits at least `RAG_MIN_RELEVANCE` relevant; with none, the answer says so.
//! - **About figures the data does not hold**: "I can't answer that from your data", with the
//!   reason, and nothing cited.
//!
//! Everything the request names is checked (question, `k`, datasets, filters) before any model
//! is paid for, and no transaction is open while a model (planner, embedder, answerer) works.
//! A question is metered once, whichever path answers it.

use std::sync::Arc;

use axum::extract::State;
use chrono::Utc;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::datasets::find_dataset;
use crate::App;
use crate::analytics::datasets::{self, Dataset, DatasetRef};
use crate::analytics::planner::{self, PlanOutcome, PlanRequest, unsupported_figures};
use crate::analytics::query::{
    self, CompiledFilter, Filter, QueryLimits, QueryResult, QuerySpec, compile_filter,
};
use crate::db::{Access, TenantTx, TxSettings};
use crate::http::{ApiError, Caller, HandlerResult, Json, caller_query_error, json_response};
use crate::rag::answer::{NO_ANSWER, Source, police, strip_active_content, template};
use crate::rag::search::{SearchRequest, embed_question, search};
use crate::usage::Meter;

const MAX_QUESTION_CHARS: usize = 2000;
const MAX_K: usize = 20;
/// Most datasets one question may name.
pub const MAX_DATASETS: usize = 20;
const SNIPPET_CHARS: usize = 300;
/// Figures resting on at most this many records cite them.
pub const MAX_RECORD_CITATIONS: usize = 5;

/// What a question about figures the data cannot answer gets.
pub const CANT_ANSWER: &str = "I can't answer that from your data.";
/// The notice of an answer from retrieval because the planner failed.
const PLANNER_FAILED: &str = "Planning queries is unavailable just now, so this was answered \
                              from your records' text only; retry for figures.";
/// The notice of figures whose reasons could not be looked up.
const REASONS_FAILED: &str = "Searching your records' text is unavailable just now, so only \
                              the figures are given; retry for the reasons.";

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
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relevance: Option<f64>,
}

#[derive(Serialize)]
struct Retrieval<'a> {
    k: usize,
    candidates: usize,
    relevant: usize,
    exact: bool,
    embedder: &'a str,
}

#[derive(Serialize)]
struct Executed {
    query: QuerySpec,
    result: QueryResult,
}

#[derive(Serialize)]
struct Answer<'a> {
    answer: String,
    /// `figures`, `content`, `both` (figures, and records that say why) or `none`.
    kind: &'static str,
    citations: Vec<Citation>,
    model: String,
    planner: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    queries: Vec<Executed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retrieval: Option<Retrieval<'a>>,
    dropped_citations: usize,
    /// Figures an answerer wrote that the result does not hold (the template answered instead).
    dropped_figures: usize,
    rejected_plans: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// What part of the question could not be worked on just now (a model was unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<&'static str>,
}

/// The request, checked: what every path needs before anything is paid for.
struct Checked<'r> {
    question: &'r str,
    k: usize,
    /// The datasets named (in order), or every dataset of the tenant (planning only) if none.
    named: Vec<Dataset>,
    all: Vec<Dataset>,
    filter: Option<CompiledFilter>,
}

pub(super) async fn ask(
    State(app): State<Arc<App>>,
    caller: Caller,
    Json(body): Json<AskRequest>,
) -> HandlerResult {
    super::within_plan(
        &app,
        &caller,
        Meter::Questions,
        1,
        ask_inner(&app, &caller, &body),
    )
    .await
}

async fn ask_inner(app: &App, caller: &Caller, body: &AskRequest) -> HandlerResult {
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
    if body.datasets.len() > MAX_DATASETS {
        return Err(ApiError::bad_request(
            "too_many_datasets",
            format!("Name at most {MAX_DATASETS} datasets."),
        ));
    }
    if body.filters.is_some() && body.datasets.len() != 1 {
        return Err(ApiError::bad_request(
            "filters_need_one_dataset",
            "filters name columns, so they need exactly one dataset in datasets.",
        ));
    }
    let checked = check(app, caller, question, k, body).await?;

    let profiles = {
        let mut tx = read_only(app, caller).await?;
        let datasets = if checked.named.is_empty() {
            &checked.all
        } else {
            &checked.named
        };
        let profiles = planner::profile(&mut tx, datasets).await?;
        tx.commit().await?;
        profiles
    };
    let planned = app
        .planner
        .plan(&PlanRequest {
            question,
            now: Utc::now(),
            datasets: &profiles,
        })
        .await;
    // A planner that fails does not take retrieval down with it: the question is answered from
    // the records' text, and the response says figures were not planned.
    let (outcome, planner_failed) = match planned {
        Ok(o) => (o, false),
        Err(e) => {
            tracing::warn!(error = %e, "planning failed; answering from retrieval");
            (PlanOutcome::default(), true)
        }
    };
    // No plan, no refusal and nothing rejected: the planner saw no question about figures.
    let response = if outcome.plans.is_empty() && outcome.refusal.is_none() && outcome.rejected == 0
    {
        let mut answer = content(app, caller, &checked, outcome.rejected).await?;
        if planner_failed {
            answer.notice = Some(PLANNER_FAILED);
        }
        answer
    } else {
        let mut answer = figures(app, caller, &checked, body, outcome).await?;
        // "What did gizmos bring in, and why were they returned?": the figures, and what the
        // records say, when they say something relevant.
        if answer.kind == "figures" && asks_for_reasons(question) {
            // The figures stand even when retrieval is unavailable; the response says so.
            match content(app, caller, &checked, 0).await {
                Ok(more) if more.kind == "content" => {
                    answer.kind = "both";
                    answer.answer = format!("{} {}", answer.answer, more.answer);
                    answer.model = format!("{} + {}", answer.model, more.model);
                    answer.citations.extend(more.citations);
                    answer.retrieval = more.retrieval;
                    answer.dropped_citations += more.dropped_citations;
                }
                Ok(_) => {}
                Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::warn!(
                        code = e.code,
                        "retrieval for the reasons failed; figures only"
                    );
                    answer.notice = Some(REASONS_FAILED);
                }
                Err(e) => return Err(e),
            }
        }
        answer
    };
    super::meter(app, caller, Meter::Questions, 1, "api:ask").await?;
    json_response(StatusCode::OK, &response)
}

/// Whether a question also asks for reasons, which records' text may hold.
fn asks_for_reasons(question: &str) -> bool {
    crate::words::words(question)
        .iter()
        .any(|w| crate::words::REASON_WORDS.contains(&w.as_str()))
}

async fn read_only(app: &App, caller: &Caller) -> Result<TenantTx, ApiError> {
    let settings = TxSettings {
        statement_timeout: Some(app.config.analytics.query_timeout),
        ..TxSettings::default()
    };
    super::begin_with(app, caller, Access::ReadOnly, settings).await
}

/// Resolves the datasets named (404 for any unknown) and compiles the filter, in one short
/// read-only transaction.
async fn check<'r>(
    app: &App,
    caller: &Caller,
    question: &'r str,
    k: usize,
    body: &AskRequest,
) -> Result<Checked<'r>, ApiError> {
    let mut tx = read_only(app, caller).await?;
    let mut named = Vec::new();
    let mut filter = None;
    for d in &body.datasets {
        let r = DatasetRef::parse(d).ok_or_else(super::datasets::dataset_not_found)?;
        let ds = find_dataset(&mut tx, &r).await?;
        if let Some(f) = &body.filters {
            filter = Some(compile_filter(f, &ds, "/filters").map_err(|errors| {
                ApiError::bad_request(
                    "invalid_filters",
                    "The filters do not fit the dataset; see errors.",
                )
                .with_extra(json!({ "errors": errors }))
            })?);
        }
        named.push(ds);
    }
    let all = if named.is_empty() {
        let mut all = datasets::list(&mut tx).await?;
        all.truncate(MAX_DATASETS);
        all
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok(Checked {
        question,
        k,
        named,
        all,
        filter,
    })
}

const NOT_RUN: &str = "The planned query did not fit your data, so it was not run.";

/// The answer to a question about figures the data cannot answer: nothing run, nothing cited.
fn refused(planner: &str, rejected: usize, reason: String) -> Answer<'_> {
    Answer {
        answer: CANT_ANSWER.to_owned(),
        kind: "none",
        citations: Vec::new(),
        model: planner.to_owned(),
        planner,
        queries: Vec::new(),
        retrieval: None,
        dropped_citations: 0,
        dropped_figures: 0,
        rejected_plans: rejected,
        reason: Some(reason),
        notice: None,
    }
}

async fn figures<'a>(
    app: &'a App,
    caller: &Caller,
    checked: &Checked<'_>,
    body: &AskRequest,
    outcome: PlanOutcome,
) -> Result<Answer<'a>, ApiError> {
    let planner_model = app.planner.model();
    let mut rejected = outcome.rejected;
    if outcome.plans.is_empty() {
        let reason = outcome.refusal.unwrap_or_else(|| NOT_RUN.into());
        return Ok(refused(planner_model, rejected, reason));
    }
    let cfg = &app.config.analytics;
    let limits = QueryLimits {
        max_limit: cfg.query_max_limit,
        ..QueryLimits::default()
    };
    let tenant = caller.principal().tenant_id.as_uuid();
    let mut tx = read_only(app, caller).await?;
    let mut executed = Vec::new();
    let mut citations = Vec::new();
    for mut spec in outcome.plans {
        // Only the datasets named (when some are), and the request's own filters on top.
        let Some(r) = DatasetRef::parse(&spec.dataset) else {
            rejected += 1;
            continue;
        };
        let allowed = checked.named.is_empty()
            || checked.named.iter().any(|d| match &r {
                DatasetRef::Id(id) => d.id == *id,
                DatasetRef::Name(n) => d.name == *n,
            });
        let Some(ds) = datasets::find(&mut tx, &r).await?.filter(|_| allowed) else {
            rejected += 1;
            continue;
        };
        if let Some(extra) = &body.filters {
            spec.filter = Some(match spec.filter.take() {
                Some(f) => Filter::And(vec![f, extra.clone()]),
                None => extra.clone(),
            });
        }
        let Ok(compiled) = query::compile(&spec, &ds, tenant, limits) else {
            tracing::info!(dataset = %ds.name, "planned query does not fit the dataset; refused");
            rejected += 1;
            continue;
        };
        // A planned query that runs past the time limit is the caller's to narrow (422), as
        // on `POST /v1/query`; a timeout anywhere else in /v1/ask is ours (503).
        let result = query::run(&mut tx, &compiled)
            .await
            .map_err(|e| caller_query_error(e.into()))?;
        citations.extend(record_citations(&mut tx, &spec, &ds, tenant, citations.len()).await?);
        executed.push(Executed {
            query: spec,
            result,
        });
    }
    tx.commit().await?;
    let Some(first) = executed.first() else {
        return Ok(refused(planner_model, rejected, NOT_RUN.into()));
    };
    let draft = match app
        .answerer
        .describe(checked.question, &first.query, &first.result)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "describing figures failed; the template states them");
            template(&first.query, &first.result)
        }
    };
    let mut text = strip_active_content(&draft.text).trim().to_owned();
    let mut model = draft.model;
    let mut dropped = 0;
    let unsupported = unsupported_figures(&text, checked.question, &first.query, &first.result);
    if !unsupported.is_empty() || text.is_empty() {
        tracing::info!(
            count = unsupported.len(),
            "answer stated figures not in the result; the template states them"
        );
        dropped = unsupported.len();
        let t = template(&first.query, &first.result);
        text = t.text;
        model = t.model;
    }
    for e in executed.iter().skip(1) {
        text.push(' ');
        text.push_str(&planner::describe(&e.query, &e.result));
    }
    // Templates quote row values and filter literals: the whole answer is made inert.
    let text = strip_active_content(&text).trim().to_owned();
    Ok(Answer {
        answer: text,
        kind: "figures",
        citations,
        model,
        planner: planner_model,
        queries: executed,
        retrieval: None,
        dropped_citations: 0,
        dropped_figures: dropped,
        rejected_plans: rejected,
        reason: None,
        notice: None,
    })
}

/// The records a query's figures rest on, when there are at most [`MAX_RECORD_CITATIONS`]:
/// the same filter and time range, as a row query.
async fn record_citations(
    tx: &mut TenantTx,
    spec: &QuerySpec,
    ds: &Dataset,
    tenant: uuid::Uuid,
    labelled: usize,
) -> Result<Vec<Citation>, ApiError> {
    let rows_spec = QuerySpec {
        dataset: spec.dataset.clone(),
        filter: spec.filter.clone(),
        group_by: Vec::new(),
        aggregates: Vec::new(),
        select: Vec::new(),
        order_by: Vec::new(),
        limit: Some(MAX_RECORD_CITATIONS as u64),
        time_range: spec.time_range.clone(),
    };
    let limits = QueryLimits::default();
    let Ok(compiled) = query::compile(&rows_spec, ds, tenant, limits) else {
        return Ok(Vec::new());
    };
    let rows = query::run(tx, &compiled).await?;
    if rows.truncated {
        return Ok(Vec::new());
    }
    Ok(rows
        .rows
        .iter()
        .enumerate()
        .filter_map(|(i, row)| {
            let cells = row.as_array()?;
            let key = cells.first()?.as_str()?.to_owned();
            let version = i32::try_from(cells.get(1)?.as_i64()?).ok()?;
            let snippet: Vec<String> = rows
                .columns
                .iter()
                .zip(cells)
                .skip(2)
                .filter(|(_, v)| !v.is_null())
                .map(|(c, v)| match v {
                    Value::String(s) => format!("{}: {s}", c.name),
                    other => format!("{}: {other}", c.name),
                })
                .collect();
            Some(Citation {
                label: format!("R{}", labelled + i + 1),
                dataset: ds.name.clone(),
                record_key: key,
                record_version: version,
                snippet: strip_active_content(&snippet.join("; "))
                    .chars()
                    .take(SNIPPET_CHARS)
                    .collect(),
                score: None,
                relevance: None,
            })
        })
        .collect())
}

async fn content<'a>(
    app: &'a App,
    caller: &Caller,
    checked: &Checked<'_>,
    rejected: usize,
) -> Result<Answer<'a>, ApiError> {
    // Embedded with no transaction open: no connection waits on the model.
    let vector = embed_question(app.embedder.as_ref(), checked.question)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "embedding_unavailable",
                "Embedding the question is temporarily unavailable; retry shortly.",
            )
            .with_source(e)
        })?;
    let settings = TxSettings {
        hnsw_ef_search: Some(app.config.rag.hnsw_ef_search),
        ..TxSettings::default()
    };
    let ids: Vec<uuid::Uuid> = checked.named.iter().map(|d| d.id).collect();
    let mut tx = super::begin_with(app, caller, Access::ReadOnly, settings).await?;
    let request = SearchRequest {
        question: checked.question,
        vector: &vector,
        k: checked.k,
        datasets: (!ids.is_empty()).then_some(&ids[..]),
        filter: checked.filter.as_ref(),
        exact_max_chunks: app.config.rag.exact_max_chunks,
        own_index_ef_search: Some(app.config.rag.tenant_index.ef_search),
        min_relevance: app.config.rag.min_relevance,
    };
    let retrieved = search(&mut tx, &request).await?;
    tx.commit().await?;
    // Only what is relevant enough was kept: nothing relevant, no answer and no citations.
    let hits = &retrieved.hits;

    let sources: Vec<Source> = hits
        .iter()
        .enumerate()
        .map(|(i, h)| Source {
            label: format!("S{}", i + 1),
            text: h.content.clone(),
        })
        .collect();
    let draft = app
        .answerer
        .answer(checked.question, &sources)
        .await
        .map_err(|e| {
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
                score: Some(h.score),
                relevance: Some(h.relevance),
            })
        })
        .collect();
    // An answer with nothing left to stand on is no answer.
    let (answer, kind) = if citations.is_empty() {
        (NO_ANSWER.to_owned(), "none")
    } else {
        (policed.text, "content")
    };
    Ok(Answer {
        answer,
        kind,
        citations,
        model: draft.model,
        planner: app.planner.model(),
        queries: Vec::new(),
        retrieval: Some(Retrieval {
            k: checked.k,
            candidates: retrieved.candidates,
            relevant: hits.len(),
            exact: retrieved.exact,
            embedder: app.embedder.model(),
        }),
        dropped_citations: policed.dropped,
        dropped_figures: 0,
        rejected_plans: rejected,
        reason: None,
        notice: None,
    })
}
