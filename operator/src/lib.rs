//! The StockNet operator: the `StockNet` custom resource, the objects it stands for (built by
//! pure functions), the health policy for order replicas, the status from what was observed,
//! and the controller that applies them.

pub mod controller;
pub mod crd;
pub mod health;
pub mod membership;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod upgrade;
