//! `mip-operator`: reconciles `MipProxy` and `HomeAgent` custom resources into running proxies
//! (docs/operator.md).

pub mod build;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
