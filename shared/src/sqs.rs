//! The one way work goes onto an SQS queue: a JSON message body.

use serde::Serialize;

/// Sends `body` as JSON to `queue_url`. The error says why, without the body.
pub(crate) async fn send_json<T: Serialize>(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    body: &T,
) -> Result<(), String> {
    let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
    client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
    Ok(())
}

/// Sends each of `bodies` as a JSON message to `queue_url`, ten to a call (SQS's most), each
/// delivered `delay_secs` (at most 900) from now at the earliest. Fails if any message was not
/// taken (the caller sends again: its messages must be safe to repeat).
pub(crate) async fn send_json_batch<T: Serialize>(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    bodies: &[T],
    delay_secs: u32,
) -> Result<(), String> {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    for chunk in bodies.chunks(10) {
        let mut call = client.send_message_batch().queue_url(queue_url);
        for (i, body) in chunk.iter().enumerate() {
            let body = serde_json::to_string(body).map_err(|e| e.to_string())?;
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .delay_seconds(delay_secs.min(900) as i32)
                .build()
                .map_err(|e| e.to_string())?;
            call = call.entries(entry);
        }
        let out = call
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
        if let Some(f) = out.failed().first() {
            return Err(format!(
                "{} of {} messages not taken (first: {} {})",
                out.failed().len(),
                chunk.len(),
                f.code(),
                f.message().unwrap_or_default()
            ));
        }
    }
    Ok(())
}
