//! One way to wait: poll until the answer is there or the deadline has passed. The harness, the
//! scenarios and the tests wait through here, so every wait has a deadline and none sleeps and
//! hopes.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every `every` until it gives `Some`, for at most `within` (it is always asked
/// at least once, and once more at the deadline); `None` when time ran out.
pub async fn until<T, F, Fut>(within: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result: Result<Option<T>, std::convert::Infallible> = try_until(within, every, || {
        let next = probe();
        async move { Ok(next.await) }
    })
    .await;
    result.unwrap_or_else(|never| match never {})
}

/// [`until`] for a probe that can fail: its first error ends the wait.
pub async fn try_until<T, E, F, Fut>(
    within: Duration,
    every: Duration,
    mut probe: F,
) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(done) = probe().await? {
            return Ok(Some(done));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_returns_once_the_probe_answers_and_gives_up_at_the_deadline() {
        let mut asked = 0;
        let got = until(Duration::from_secs(5), Duration::from_millis(1), || {
            asked += 1;
            let n = asked;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, Some(3));
        let started = Instant::now();
        let never: Option<()> = until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || async { None },
        )
        .await;
        assert!(
            never.is_none()
                && started.elapsed() >= Duration::from_millis(50)
                && started.elapsed() < Duration::from_secs(2)
        );
        let failed: Result<Option<()>, &str> =
            try_until(Duration::from_secs(5), Duration::from_millis(1), || async {
                Err("broken")
            })
            .await;
        assert_eq!(failed, Err("broken"), "an error ends the wait at once");
    }
}
