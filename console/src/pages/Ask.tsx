import { useState, type FormEvent } from "react";
import { Link } from "react-router-dom";
import { api, type AskAnswer } from "../api";
import { CopyButton, ProblemView, ResultChart, ResultTable, groupNames, useAction } from "../ui";

export function Ask() {
  const [question, setQuestion] = useState("");
  const [answer, setAnswer] = useState<AskAnswer>();
  const { error, busy, run } = useAction();
  const ask = async (e: FormEvent) => {
    e.preventDefault();
    if (!(await run(async () => setAnswer(await api<AskAnswer>("/v1/ask", { body: { question } }))))) {
      setAnswer(undefined);
    }
  };
  return (
    <>
      <h1>Ask</h1>
      <form className="card" onSubmit={(e) => void ask(e)} aria-label="Ask a question">
        <label>
          Question
          <textarea
            value={question}
            onChange={(e) => setQuestion(e.target.value)}
            rows={2}
            required
            maxLength={2000}
            placeholder="What is the total amount by region? · Which orders arrived damaged?"
          />
        </label>
        <button type="submit" disabled={busy || !question.trim()}>
          {busy ? "Thinking…" : "Ask"}
        </button>
      </form>
      <ProblemView error={error} />
      {answer && <AnswerView answer={answer} />}
    </>
  );
}

function AnswerView({ answer }: { answer: AskAnswer }) {
  return (
    <section className="card" aria-label="Answer">
      <h2>Answer</h2>
      <p className="answer" data-testid="answer" data-kind={answer.kind}>
        {answer.answer}
      </p>
      {answer.notice && (
        <p className="notice warn" role="status">
          {answer.notice}
        </p>
      )}
      {answer.reason && <p className="muted">Why: {answer.reason}</p>}
      <p className="muted small">
        {answer.kind} · model {answer.model} · planner {answer.planner}
        {answer.dropped_figures > 0 && ` · ${answer.dropped_figures} unsupported figures dropped`}
      </p>
      {(answer.queries ?? []).map((q, i) => {
        const json = JSON.stringify(q.query, null, 2);
        return (
          <div key={i} className="executed">
            <h3>Figures from this query</h3>
            <ResultChart result={q.result} groupBy={groupNames((q.query as { group_by?: unknown }).group_by)} />
            <ResultTable result={q.result} />
            <details>
              <summary>The executed query</summary>
              <pre data-testid="executed-query">{json}</pre>
              <CopyButton text={json} label="Copy JSON" />
            </details>
          </div>
        );
      })}
      {answer.citations.length > 0 && (
        <>
          <h3>Citations</h3>
          <ol className="citations">
            {answer.citations.map((c) => (
              <li key={c.label}>
                <Link
                  className="citation"
                  to={`/datasets/${encodeURIComponent(c.dataset)}/records/${encodeURIComponent(c.record_key)}?version=${c.record_version}`}
                >
                  [{c.label}] {c.dataset}/{c.record_key} v{c.record_version}
                </Link>
                <blockquote>{c.snippet}</blockquote>
              </li>
            ))}
          </ol>
        </>
      )}
    </section>
  );
}
