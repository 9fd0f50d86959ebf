//! The broker round trip behind `latest` reads, shared by a burst of them. A read joins the next
//! round; a round starts when none is running and takes every read waiting at that moment; reads
//! that arrive while a round is out wait for the following one. So every read gets end offsets
//! asked for after it arrived, and a burst of reads costs one or two broker requests, not one each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::store::Table;

/// How long one round waits for the broker's answer.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// Every partition's end offset, or why the broker could not say.
pub type EndOffsets = Result<Arc<Vec<(i32, i64)>>, String>;

/// One table's rounds.
#[derive(Default)]
pub struct Rounds {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: bool,
    waiting: Vec<oneshot::Sender<EndOffsets>>,
}

impl Rounds {
    /// The table's end offsets, from a broker request made after this call.
    pub async fn end_offsets(self: &Arc<Self>, table: &Arc<Table>) -> EndOffsets {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.waiting.push(answer);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(self.clone().run(table.clone()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err("the end-offset request was dropped".into()))
    }

    async fn run(self: Arc<Self>, table: Arc<Table>) {
        loop {
            let waiting = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let asking = table.clone();
            let answer = tokio::task::spawn_blocking(move || asking.fetch_end_offsets(ROUND_TIMEOUT))
                .await
                .unwrap_or_else(|e| Err(format!("the end-offset request failed: {e}")))
                .map(Arc::new);
            for read in waiting {
                let _ = read.send(answer.clone());
            }
        }
    }
}
