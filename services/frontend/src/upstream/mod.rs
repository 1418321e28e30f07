//! The frontend's calls to the other services: the catalog (behind a breaker) and the order
//! group's leader (with retries that keep answers true).

pub mod breaker;
pub mod catalog;
pub mod leader;
pub mod order_group;
