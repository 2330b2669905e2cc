//! The one way files are reloaded: a [`Reloadable`] value (certificate,
//! CA bundle, token) is loaded at start-up, then reloaded whenever its files
//! change, without touching open connections. A reload publishes the new
//! value; new handshakes (and new kubelet connections) pick it up, old ones
//! keep theirs. A file that fails to load is logged and counted
//! (`kubelet_guard_certificate_reloads_total{material,result}`), and the
//! last good value stays in use.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink in the
//! mount directory, so the *directories* are watched (inotify, via notify),
//! and every file is re-checked periodically as well in case an event is
//! missed. Nothing is reloaded unless the files' contents changed.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::drain::Drain;
use crate::metrics::Metrics;

/// The last good value loaded from a set of files. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloadable<T> {
    current: watch::Receiver<T>,
}

impl<T: Clone> Reloadable<T> {
    /// The value now.
    pub fn get(&self) -> T {
        self.current.borrow().clone()
    }

    /// Follows the value: `borrow()` always gives the latest.
    pub fn watch(&self) -> watch::Receiver<T> {
        self.current.clone()
    }
}

/// Every reloadable value of the gateway, and the task that keeps them
/// current ([`Reloader::run`]).
pub struct Reloader {
    materials: Vec<Material>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Reloader {
            materials: Vec::new(),
            metrics,
        }
    }

    /// Loads `name` with `load` now — an error is returned, for start-up to
    /// fail on — and again whenever one of `paths` (what `load` reads)
    /// changes. `name` is the `material` label of the reload counter.
    pub fn add<T, E>(
        &mut self,
        name: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + 'static,
    ) -> Result<Reloadable<T>, E>
    where
        T: Send + Sync + 'static,
        E: Display,
    {
        // Taken first: a change during the load is seen by the next check.
        let fingerprint = fingerprint(&paths);
        let (updates, current) = watch::channel(load()?);
        self.materials.push(Material {
            name,
            paths,
            load: Box::new(move || {
                updates.send_replace(load().map_err(|e| e.to_string())?);
                Ok(())
            }),
            fingerprint,
        });
        Ok(Reloadable { current })
    }

    /// Watches and reloads until the gateway has stopped.
    pub async fn run(self, resync: Duration, drain: Drain) {
        watch_files(self.materials, self.metrics, resync, drain).await;
    }
}

/// Loads a value from its files and publishes it.
type Load = Box<dyn Fn() -> Result<(), String> + Send>;

/// One set of files that is loaded together (a certificate and its key, say).
struct Material {
    name: &'static str,
    paths: Vec<PathBuf>,
    load: Load,
    fingerprint: u64,
}

impl Material {
    /// Reloads if the files changed since the last look.
    fn check(&mut self, metrics: &Metrics) {
        let now = fingerprint(&self.paths);
        if now == self.fingerprint {
            return;
        }
        // Remember even a broken version, so it is reported once, not on
        // every later check.
        self.fingerprint = now;
        match (self.load)() {
            Ok(()) => {
                tracing::info!(material = self.name, "reloaded");
                metrics.reloaded(self.name, true);
            }
            Err(error) => {
                tracing::error!(material = self.name, %error, "reload failed; keeping the previous one");
                metrics.reloaded(self.name, false);
            }
        }
    }
}

/// Contents of every file (or the error reading it), hashed.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(error) => error.kind().to_string().hash(&mut hasher),
        }
    }
    hasher.finish()
}

async fn watch_files(
    mut materials: Vec<Material>,
    metrics: Arc<Metrics>,
    resync: Duration,
    drain: Drain,
) {
    if materials.is_empty() {
        return;
    }
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files to fingerprint them raises access events.
        if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = changed.try_send(());
        }
    });
    let directories: BTreeSet<PathBuf> = materials
        .iter()
        .flat_map(|m| &m.paths)
        .filter_map(|p| {
            p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_owned()
                }
            })
        })
        .collect();
    let _watcher = match watcher {
        Ok(mut watcher) => {
            for directory in &directories {
                if let Err(error) = watcher.watch(directory, RecursiveMode::NonRecursive) {
                    tracing::warn!(directory = %directory.display(), %error, "cannot watch; relying on the periodic check");
                }
            }
            Some(watcher)
        }
        Err(error) => {
            tracing::warn!(%error, "file watching unavailable; relying on the periodic check");
            None
        }
    };

    // Files that changed between the start-up load and the watch being set
    // up raised no event: look once now.
    for material in &mut materials {
        material.check(&metrics);
    }

    let mut resync = tokio::time::interval(resync);
    resync.tick().await;
    loop {
        tokio::select! {
            () = drain.stopped() => return,
            _ = changes.recv() => {
                // A Secret update touches several files; let it settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = resync.tick() => {}
        }
        for material in &mut materials {
            material.check(&metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn reloads_on_change_and_keeps_going_after_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "one").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let path = file.clone();
        let metrics = Arc::new(Metrics::new());
        let mut reloader = Reloader::new(metrics.clone());
        let token = reloader
            .add("upstream_token", vec![file.clone()], move || {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                if text.is_empty() {
                    return Err("empty".to_owned());
                }
                sink.lock().unwrap().push(text.clone());
                Ok(text)
            })
            .unwrap();
        assert_eq!(token.get(), "one", "loaded at once");
        // Only reloads from here on.
        seen.lock().unwrap().clear();
        let drain = Drain::new();
        let task = tokio::spawn(reloader.run(Duration::from_secs(3600), drain.clone()));

        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..100 {
                    if seen.lock().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("no reload");
            }
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&file, "two").unwrap();
        wait_for(1).await;
        assert_eq!(token.get(), "two");
        std::fs::write(&file, "").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(token.get(), "two", "the last good value stays");
        std::fs::write(&file, "three").unwrap();
        wait_for(2).await;

        assert_eq!(*seen.lock().unwrap(), ["two", "three"]);
        assert_eq!(token.get(), "three");
        let text = metrics.encode();
        assert!(
            text.contains(r#"material="upstream_token",result="success"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"material="upstream_token",result="failure"} 1"#),
            "{text}"
        );
        drain.stop();
        task.await.unwrap();
    }
}

#[cfg(test)]
mod start_up_tests {
    use super::*;

    #[test]
    fn a_value_that_cannot_be_loaded_at_start_up_is_an_error() {
        let mut reloader = Reloader::new(Arc::new(Metrics::new()));
        let loaded: Result<Reloadable<u8>, String> =
            reloader.add("upstream_ca", vec![], || Err("no such file".to_owned()));
        assert_eq!(loaded.unwrap_err(), "no such file");
        assert!(reloader.materials.is_empty(), "nothing left to watch");
    }
}
