//! How work that outlives a call is run, decided by the wiring and passed to the in-process
//! adapters (never read from the environment by them).

/// Whether in-process work runs before the call returns or in a background task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Before the call returns: in Lambda, where a frozen execution environment would never
    /// finish a background task.
    Inline,
    /// In a background task (the local runner, tests).
    Background,
}

impl Work {
    /// Runs `work` as this mode says.
    pub async fn run(self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        match self {
            Work::Inline => work.await,
            Work::Background => {
                tokio::spawn(work);
            }
        }
    }
}
