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
