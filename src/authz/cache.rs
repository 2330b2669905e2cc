//! Decisions of SubjectAccessReviews, cached by what the review asks (who,
//! verb, subresource — the node is fixed), not by URL: `/metrics` and
//! `/metrics/cadvisor` share one decision, as in the kubelet. Allows live
//! longer than denials, so a newly granted permission shows up soon.
//! Concurrent identical misses wait for one review instead of sending many.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::Source;
use super::attributes::{Subresource, Verb};
use super::sar::ReviewError;
use crate::authn::Identity;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReviewKey {
    pub identity: Arc<Identity>,
    pub verb: Verb,
    pub subresource: Subresource,
}

/// Keyed by [`ReviewKey`] for the kubelet API; any other key type holds
/// decisions of another fixed question (the secure metrics listener keys
/// `get /metrics` by identity alone).
pub struct DecisionCache<K = ReviewKey> {
    decisions: Cache<K, bool>,
}

struct ByDecision {
    allowed: Duration,
    denied: Duration,
}

impl<K> Expiry<K, bool> for ByDecision {
    fn expire_after_create(&self, _: &K, allowed: &bool, _: Instant) -> Option<Duration> {
        Some(if *allowed { self.allowed } else { self.denied })
    }
}

impl<K: Hash + Eq + Send + Sync + 'static> DecisionCache<K> {
    pub fn new(authorized_ttl: Duration, unauthorized_ttl: Duration, max_entries: u64) -> Self {
        DecisionCache {
            decisions: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ByDecision {
                    allowed: authorized_ttl,
                    denied: unauthorized_ttl,
                })
                .build(),
        }
    }

    /// The cached decision for `key`, or the result of the review that
    /// `review` makes (shared with every concurrent caller asking the
    /// same). Failures are not cached.
    ///
    /// A hit builds neither the review nor the cache's insertion future,
    /// and a miss awaits them boxed: together they are kilobytes, and every
    /// request's future would otherwise be that much larger — moved on
    /// every request, and copied twice more when HTTP/2 spawns it as a task
    /// (bench/PROFILE.md, "Small GET over HTTP/2").
    pub async fn decide<F>(
        &self,
        key: K,
        review: impl FnOnce() -> F,
    ) -> Result<(bool, Source), Arc<ReviewError>>
    where
        F: Future<Output = Result<bool, ReviewError>>,
    {
        if let Some(allowed) = self.decisions.get(&key).await {
            return Ok((allowed, Source::Cache));
        }
        let entry = Box::pin(self.decisions.entry(key).or_try_insert_with(review())).await?;
        let source = if entry.is_fresh() {
            Source::Review
        } else {
            Source::Cache
        };
        Ok((entry.into_value(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(user: &str) -> ReviewKey {
        ReviewKey {
            identity: Arc::new(Identity {
                user: user.into(),
                ..Identity::default()
            }),
            verb: Verb::Get,
            subresource: Subresource::Proxy,
        }
    }

    #[tokio::test]
    async fn a_second_ask_is_answered_from_the_cache() {
        let cache = DecisionCache::new(Duration::from_secs(60), Duration::from_secs(60), 100);
        let reviews = AtomicUsize::new(0);
        let review = || async {
            reviews.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        };
        assert_eq!(
            cache.decide(key("a"), review).await.unwrap(),
            (true, Source::Review)
        );
        assert_eq!(
            cache.decide(key("a"), review).await.unwrap(),
            (true, Source::Cache)
        );
        assert_eq!(
            cache.decide(key("b"), review).await.unwrap(),
            (true, Source::Review)
        );
        assert_eq!(reviews.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_hit_builds_no_review() {
        let cache = DecisionCache::new(Duration::from_secs(60), Duration::from_secs(60), 100);
        let built = AtomicUsize::new(0);
        let review = || {
            built.fetch_add(1, Ordering::SeqCst);
            async { Ok(true) }
        };
        cache.decide(key("a"), review).await.unwrap();
        assert_eq!(
            cache.decide(key("a"), review).await.unwrap(),
            (true, Source::Cache)
        );
        assert_eq!(built.load(Ordering::SeqCst), 1, "the hit built a review");
    }

    fn down() -> ReviewError {
        crate::fault::ReviewFailure {
            kind: crate::fault::ReviewKind::SubjectAccessReview,
            cause: crate::fault::ApiserverCause::Unreachable,
            detail: "down".into(),
        }
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = DecisionCache::new(Duration::from_secs(60), Duration::from_secs(60), 100);
        let failed = cache.decide(key("a"), || async { Err(down()) }).await;
        assert_eq!(failed.unwrap_err().as_ref(), &down());
        let answered = cache
            .decide(key("a"), || async { Ok(false) })
            .await
            .unwrap();
        assert_eq!(answered, (false, Source::Review));
    }

    #[tokio::test]
    async fn denials_expire_sooner_than_allows() {
        let cache = DecisionCache::new(Duration::from_millis(400), Duration::from_millis(100), 100);
        cache
            .decide(key("allowed"), || async { Ok(true) })
            .await
            .unwrap();
        cache
            .decide(key("denied"), || async { Ok(false) })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = |allowed| async move { Ok(allowed) };
        assert_eq!(
            cache
                .decide(key("allowed"), || again(true))
                .await
                .unwrap()
                .1,
            Source::Cache
        );
        assert_eq!(
            cache
                .decide(key("denied"), || again(false))
                .await
                .unwrap()
                .1,
            Source::Review
        );
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_review() {
        let cache = Arc::new(DecisionCache::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            100,
        ));
        let reviews = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                let reviews = reviews.clone();
                tokio::spawn(async move {
                    cache
                        .decide(key("a"), || async {
                            reviews.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(true)
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().unwrap().0);
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 1);
    }
}
