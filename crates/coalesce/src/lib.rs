//! Group commit. Callers that each need one small write (a row, a Redis script call) hand it to
//! a [`Coalescer`]; its workers take whatever requests are waiting — one, or hundreds under
//! load — and serve them with one batched call. An idle system pays no extra latency (a lone
//! request goes out at once); a busy one pays one round trip per batch instead of per request.
//!
//! The batch function answers every request of a batch, in order, or fails the whole batch.
//! A failed batch of several requests is retried one request at a time, so one request the
//! dependency refuses (bad data) fails alone instead of taking its batch-mates with it; when
//! the dependency is down, each of those calls fails fast anyway.
//!
//! A batch call that panics (a bug, perhaps set off by one request's data) is caught and its
//! batch retried one request at a time like a failed one; the caller whose request still
//! panics alone panics in turn. The panic lands in the caller's task, whose own isolation deals
//! with it (the consumer dead-letters that message), and the workers keep serving everyone
//! else.
#![forbid(unsafe_code)]

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// `None`: the request's batch call panicked when it ran alone.
type Reply<Resp, E> = oneshot::Sender<Option<Result<Resp, E>>>;
/// The request queue, shared by the workers.
type Queue<Req, Resp, E> = Arc<Mutex<mpsc::UnboundedReceiver<(Req, Reply<Resp, E>)>>>;

/// A handle for submitting requests; clone it freely. The workers stop when every handle is
/// dropped.
pub struct Coalescer<Req, Resp, E> {
    tx: mpsc::UnboundedSender<(Req, Reply<Resp, E>)>,
}

impl<Req, Resp, E> Clone for Coalescer<Req, Resp, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

/// A request got no answer: the workers are gone (the runtime is shutting down), a batch call
/// panicked, or the batch function returned fewer answers than requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAnswer;

impl<Req, Resp, E> Coalescer<Req, Resp, E>
where
    Req: Clone + Send + Sync + 'static,
    Resp: Send + 'static,
    E: Send + 'static,
{
    /// Starts `workers` tasks (at least one) on the current runtime, each running `batch` on
    /// up to `max_batch` requests at a time; several workers let one batch be prepared while
    /// another is in flight.
    pub fn spawn<F, Fut>(workers: usize, max_batch: usize, batch: F) -> Self
    where
        F: Fn(Arc<[Req]>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>, E>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let batch = Arc::new(batch);
        for _ in 0..workers.max(1) {
            tokio::spawn(worker(rx.clone(), batch.clone(), max_batch.max(1)));
        }
        Self { tx }
    }

    /// Submits one request and waits for its answer.
    ///
    /// # Panics
    /// When the batch call panicked on this request alone: the panic is passed on to the
    /// caller (see the module documentation).
    pub async fn call(&self, req: Req) -> Result<Result<Resp, E>, NoAnswer> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).map_err(|_| NoAnswer)?;
        match answer.await.map_err(|_| NoAnswer)? {
            Some(answer) => Ok(answer),
            None => panic!("a batch call panicked on this request"),
        }
    }
}

/// How one batch call ended.
enum Ended<Resp, E> {
    Answered(Vec<Resp>),
    Failed(E),
    Panicked,
}

/// Runs one batch call, catching a panic so it ends the call, not the worker. (Not a task of
/// its own: that would add a scheduling hop to every batch.)
async fn run<Req, Resp, E, F, Fut>(batch: &Arc<F>, reqs: Arc<[Req]>) -> Ended<Resp, E>
where
    F: Fn(Arc<[Req]>) -> Fut,
    Fut: Future<Output = Result<Vec<Resp>, E>>,
{
    match AssertUnwindSafe(batch(reqs)).catch_unwind().await {
        Ok(Ok(answers)) => Ended::Answered(answers),
        Ok(Err(e)) => Ended::Failed(e),
        Err(_) => Ended::Panicked,
    }
}

async fn worker<Req, Resp, E, F, Fut>(rx: Queue<Req, Resp, E>, batch: Arc<F>, max_batch: usize)
where
    Req: Clone,
    F: Fn(Arc<[Req]>) -> Fut,
    Fut: Future<Output = Result<Vec<Resp>, E>>,
{
    let mut taken = Vec::with_capacity(max_batch);
    loop {
        {
            // Only the worker holding the lock collects; the others wait their turn, so each
            // batch is everything that queued up while the previous one was being collected.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut taken, max_batch).await == 0 {
                return;
            }
        }
        let (reqs, replies): (Vec<Req>, Vec<Reply<Resp, E>>) = taken.drain(..).unzip();
        let reqs: Arc<[Req]> = reqs.into();
        match run(&batch, reqs.clone()).await {
            Ended::Answered(answers) => answer(replies, answers),
            ended if reqs.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    fail(reply, ended);
                }
            }
            // Several requests: each again alone, so only the one at fault fails.
            _ => {
                for (req, reply) in reqs.iter().zip(replies) {
                    match run(&batch, Arc::new([req.clone()])).await {
                        Ended::Answered(answers) => answer(vec![reply], answers),
                        ended => fail(reply, ended),
                    }
                }
            }
        }
    }
}

/// Tells a caller its request failed alone (or panicked alone).
fn fail<Resp, E>(reply: Reply<Resp, E>, ended: Ended<Resp, E>) {
    let _ = reply.send(match ended {
        Ended::Failed(e) => Some(Err(e)),
        Ended::Answered(_) | Ended::Panicked => None,
    });
}

/// Hands each caller its answer. A missing answer drops its reply sender: that caller gets
/// `NoAnswer`, never another request's answer.
fn answer<Resp, E>(replies: Vec<Reply<Resp, E>>, answers: Vec<Resp>) {
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(Some(Ok(answer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_lone_request_is_served_at_once() {
        let c = Coalescer::spawn(1, 8, |reqs: Arc<[u32]>| async move {
            Ok::<_, String>(reqs.iter().map(|r| r * 2).collect())
        });
        assert_eq!(c.call(21).await, Ok(Ok(42)));
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let c = Coalescer::spawn(1, 64, move |reqs: Arc<[u32]>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                Ok::<_, String>(reqs.iter().map(|r| r + 1000).collect())
            }
        });
        let answers = futures_join((0..200u32).map(|i| {
            let c = c.clone();
            async move { c.call(i).await }
        }))
        .await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a, Ok(Ok(i as u32 + 1000)));
        }
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 200, "200 concurrent requests took {n} batch calls");
        assert!(n >= 200 / 64, "a batch exceeded the limit: {n} calls");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_requests_and_later_ones_still_work() {
        let fail = Arc::new(AtomicUsize::new(1));
        let f = fail.clone();
        let c = Coalescer::spawn(2, 8, move |reqs: Arc<[u32]>| {
            let failing = f.fetch_sub(1, Ordering::SeqCst) == 1;
            async move {
                if failing {
                    Err("down".to_owned())
                } else {
                    Ok(reqs.to_vec())
                }
            }
        });
        assert_eq!(c.call(1).await, Ok(Err("down".to_owned())));
        assert_eq!(c.call(2).await, Ok(Ok(2)));
    }

    #[tokio::test]
    async fn a_request_its_dependency_refuses_fails_alone_not_its_whole_batch() {
        let c = Coalescer::spawn(1, 64, |reqs: Arc<[u32]>| async move {
            tokio::task::yield_now().await;
            if reqs.contains(&13) {
                Err(format!("13 is refused (batch of {})", reqs.len()))
            } else {
                Ok(reqs.to_vec())
            }
        });
        let answers = futures_join((0..40u32).map(|i| {
            let c = c.clone();
            async move { (i, c.call(i).await) }
        }))
        .await;
        for (i, a) in answers {
            if i == 13 {
                assert_eq!(a, Ok(Err("13 is refused (batch of 1)".to_owned())));
            } else {
                assert_eq!(a, Ok(Ok(i)), "request {i}");
            }
        }
    }

    #[tokio::test]
    async fn a_panicking_request_panics_its_caller_alone_and_the_workers_go_on() {
        let c = Coalescer::spawn(1, 64, |reqs: Arc<[u32]>| async move {
            tokio::task::yield_now().await;
            assert!(!reqs.contains(&13), "a bug set off by request 13");
            Ok::<_, String>(reqs.to_vec())
        });
        let calls: Vec<_> = (0..40u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.call(i).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            match call.await {
                Ok(answer) => assert_eq!(answer, Ok(Ok(i as u32)), "request {i}"),
                Err(e) => assert!(i == 13 && e.is_panic(), "request {i}: {e}"),
            }
        }
        assert_eq!(c.call(99).await, Ok(Ok(99)), "still serving");
    }

    #[tokio::test]
    async fn a_short_answer_leaves_the_unanswered_caller_with_an_error_not_a_wrong_value() {
        let c = Coalescer::spawn(1, 8, |_reqs: Arc<[u32]>| async move {
            Ok::<Vec<u32>, String>(Vec::new())
        });
        assert_eq!(c.call(5).await, Err(NoAnswer));
    }

    /// Runs the futures concurrently on this task (no extra dependency for `join_all`).
    async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = fs.map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
