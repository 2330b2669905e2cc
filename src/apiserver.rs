//! The gateway's own client to the apiserver, for SubjectAccessReview and
//! TokenReview. It authenticates as the gateway's ServiceAccount; kube
//! re-reads a token file at least once a minute, so a rotated projected
//! token is picked up without a restart.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiserverError {
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no --kubeconfig and not running in a pod ({0}): give --kubeconfig, or --authorization-mode=Static and --authentication-token-webhook=false to run without an apiserver"
    )]
    NotInCluster(kube::config::InClusterError),
    #[error("cannot build the apiserver client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or the in-cluster ServiceAccount without one.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ApiserverError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| ApiserverError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => kube::Config::incluster().map_err(ApiserverError::NotInCluster)?,
    };
    Ok(kube::Client::try_from(config)?)
}
