//! Per-client admission to the public API: a token bucket (governor) and a cap on requests in
//! flight, both per client: the user whose API key a request carries (verified), or else the
//! client's address; the users at one address also together, at [`USERS_AT_SHARE`] times
//! that. A request over either is answered 429 with `Retry-After` at once; nothing
//! waits in a queue. Both are off unless configured. Apart from them, and on by default, the
//! users an address may create (`POST /users`, which needs no key and makes the catalog write
//! and keep a user for good) are limited per minute.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use stocknet_common::connections::client_address;
use stocknet_common::envelope::with_retry_after;
use stocknet_common::paths;
use stocknet_common::ApiError;

use crate::{credentials, AppState, FrontendError};
use stocknet_common::env;

/// Clients whose buckets are kept before idle ones are dropped.
const TRACKED_CLIENTS: usize = 10_000;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Requests per second each client may make on average (0: no limit).
    #[arg(long, env = env::RATE_LIMIT, default_value_t = 0)]
    pub rate_limit: u32,
    /// Requests a client may make at once above its rate (default, and 0: one second's worth);
    /// without `--rate-limit` it limits nothing.
    #[arg(long, env = env::RATE_BURST)]
    pub rate_burst: Option<u32>,
    /// Requests each client may have in flight (0: no limit).
    #[arg(long, env = env::MAX_IN_FLIGHT, default_value_t = 0)]
    pub max_in_flight: u32,
    /// Connections each client address may keep open at once; more are closed as they come
    /// (0: no limit; behind a proxy every client has the proxy's address).
    #[arg(long, env = env::MAX_CONNECTIONS_PER_CLIENT, default_value_t = 0)]
    pub max_connections_per_client: usize,
    /// Users one client address may create a minute (`POST /users`; at most that many at
    /// once), whatever the other limits (0: no limit).
    #[arg(long, env = env::NEW_USERS_PER_MINUTE, default_value_t = 60)]
    pub new_users_per_minute: u32,
}

/// Whom a limit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// A user, whatever address their requests come from.
    User(u64),
    /// An anonymous client.
    Address(IpAddr),
    /// The users whose requests come from one address, together, at [`USERS_AT_SHARE`] times
    /// one client's limits: an address that makes users (`POST /users` needs no key) gets no
    /// more than that.
    UsersAt(IpAddr),
}

/// How many clients' worth of requests the users at one address make together at most.
pub const USERS_AT_SHARE: u32 = 10;

pub struct Limits {
    rate: Option<DefaultKeyedRateLimiter<Client>>,
    /// The rate of [`Client::UsersAt`].
    users_at_rate: Option<DefaultKeyedRateLimiter<Client>>,
    new_users: Option<DefaultKeyedRateLimiter<IpAddr>>,
    max_in_flight: Option<u32>,
    in_flight: Mutex<HashMap<Client, u32>>,
    clock: DefaultClock,
    /// When idle buckets were last dropped, of each limiter: a scan of every bucket, so at
    /// most once per [`PRUNE_EVERY`], not once per request while many clients are tracked.
    rate_pruned: Mutex<Option<std::time::Instant>>,
    users_at_pruned: Mutex<Option<std::time::Instant>>,
    new_users_pruned: Mutex<Option<std::time::Instant>>,
}

/// How often idle clients' buckets may be dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Whether idle buckets whose last drop `pruned` notes may be dropped now; if so, notes that
/// they are.
fn prune_due(pruned: &Mutex<Option<std::time::Instant>>) -> bool {
    let mut pruned = pruned.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    let due = pruned.is_none_or(|last| now.duration_since(last) >= PRUNE_EVERY);
    if due {
        *pruned = Some(now);
    }
    due
}

/// Why a request was not admitted: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    pub retry_after: Duration,
}

impl Limits {
    pub fn new(args: &LimitArgs) -> Self {
        let quota = |share: NonZeroU32| {
            NonZeroU32::new(args.rate_limit).map(|rate| {
                let burst = args.rate_burst.and_then(NonZeroU32::new).unwrap_or(rate);
                let quota = Quota::per_second(rate.saturating_mul(share));
                RateLimiter::keyed(quota.allow_burst(burst.saturating_mul(share)))
            })
        };
        let rate = quota(NonZeroU32::MIN);
        let users_at_rate = NonZeroU32::new(USERS_AT_SHARE).and_then(quota);
        let new_users = NonZeroU32::new(args.new_users_per_minute)
            .map(|per_minute| RateLimiter::keyed(Quota::per_minute(per_minute)));
        Self {
            rate,
            users_at_rate,
            new_users,
            max_in_flight: (args.max_in_flight > 0).then_some(args.max_in_flight),
            in_flight: Mutex::default(),
            clock: DefaultClock::default(),
            rate_pruned: Mutex::default(),
            users_at_pruned: Mutex::default(),
            new_users_pruned: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate.is_some() || self.max_in_flight.is_some()
    }

    /// Admits a request of `client`, or says when it may try again. The guard counts the
    /// request in flight until it is dropped.
    pub fn admit(self: &Arc<Self>, client: Client) -> Result<InFlight, TooMany> {
        let (max_in_flight, rate, pruned) = match client {
            Client::UsersAt(_) => (
                self.max_in_flight
                    .map(|cap| cap.saturating_mul(USERS_AT_SHARE)),
                &self.users_at_rate,
                &self.users_at_pruned,
            ),
            Client::User(_) | Client::Address(_) => {
                (self.max_in_flight, &self.rate, &self.rate_pruned)
            }
        };
        // The cap on requests in flight first: a request it refuses spends none of the
        // client's rate.
        let mut in_flight = max_in_flight.map(|cap| (cap, self.lock()));
        if let Some((cap, in_flight)) = &in_flight {
            if in_flight.get(&client).is_some_and(|count| count >= cap) {
                return Err(TooMany {
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        if let Some(rate) = rate {
            if rate.len() > TRACKED_CLIENTS && prune_due(pruned) {
                rate.retain_recent();
            }
            rate.check_key(&client).map_err(|not_until| TooMany {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        }
        if let Some((_, in_flight)) = &mut in_flight {
            *in_flight.entry(client).or_insert(0) += 1;
        }
        Ok(InFlight {
            limits: self.clone(),
            client,
        })
    }

    /// Admits a new user from `address`, or says when it may try again.
    pub fn admit_new_user(&self, address: IpAddr) -> Result<(), TooMany> {
        let Some(new_users) = &self.new_users else {
            return Ok(());
        };
        if new_users.len() > TRACKED_CLIENTS && prune_due(&self.new_users_pruned) {
            new_users.retain_recent();
        }
        new_users.check_key(&address).map_err(|not_until| TooMany {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Client, u32>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in flight: it stops counting when dropped.
pub struct InFlight {
    limits: Arc<Limits>,
    client: Client,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.limits.max_in_flight.is_none() {
            return;
        }
        let mut in_flight = self.limits.lock();
        if let Some(count) = in_flight.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                // Only clients with requests in flight are kept.
                in_flight.remove(&self.client);
            }
        }
    }
}

/// What the limits decide of a request before any API key it carries is looked at.
pub(crate) enum BeforeKey {
    /// Not limited: limits off, a health check, the deployment's shared secret, or a request
    /// without a key whose address is unknown (served in-process).
    Unlimited,
    /// A request without a key, admitted against its address: in flight until this is dropped.
    Admitted(InFlight),
    /// A request without a key over its address's limit: its 429.
    Refused(Response),
    /// It carries a key (or something in its place), which decides; from this address, if
    /// known.
    Keyed(Option<IpAddr>),
}

/// The part of [`limit`] that needs no key: all of it for a request without one. The
/// frontend's cached lookups, answered before routing, go by it too.
pub(crate) fn before_key(state: &AppState, request: &Request) -> BeforeKey {
    if !state.inner.limits.enabled()
        || request.uri().path() == paths::HEALTH.pattern()
        || state.inner.secret.admits(request.headers())
    {
        return BeforeKey::Unlimited;
    }
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| client_address(info.0.ip()));
    if request.headers().contains_key(header::AUTHORIZATION) {
        return BeforeKey::Keyed(address);
    }
    let Some(address) = address else {
        return BeforeKey::Unlimited;
    };
    let client = Client::Address(address);
    match state.inner.limits.admit(client) {
        Ok(in_flight) => BeforeKey::Admitted(in_flight),
        Err(too_many) => BeforeKey::Refused(over_its_limit(client, too_many)),
    }
}

/// Middleware of the public routes. A request with an API key counts against its user once the
/// key is verified (a bad key is refused here, 401, on every route); one without, or with a
/// key that cannot be verified while the catalog is unreachable, against its address. Checking
/// a key this frontend keeps no credentials for asks the catalog, so it costs the address one
/// request first. Health
/// checks (the kubelet's probes, the operator's) and the deployment's operators (its shared
/// secret, which `GET /audit` takes in place of a key) are never limited, and an anonymous
/// request whose address is unknown (served in-process, as in router tests) is admitted.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let address = match before_key(&state, &request) {
        BeforeKey::Unlimited => return next.run(request).await,
        BeforeKey::Refused(refused) => return refused,
        BeforeKey::Admitted(in_flight) => {
            let response = next.run(request).await;
            drop(in_flight);
            return response;
        }
        BeforeKey::Keyed(address) => address,
    };
    let limits = &state.inner.limits;
    let key = match credentials::bearer(request.headers()) {
        Ok(key) => key,
        Err(refused) => return refused.into_response(),
    };
    // A key of a user whose credentials this frontend does not keep is checked by asking the
    // catalog: its address is admitted for that first (and counts it in flight meanwhile), so
    // that made-up keys cannot make the catalog work without limit.
    let mut admitted = None;
    if let (Some(key), Some(address)) = (&key, address) {
        if credentials::kept(&state, key.user()).is_none() {
            match limits.admit(Client::Address(address)) {
                Ok(in_flight) => admitted = Some(in_flight),
                Err(too_many) => return over_its_limit(Client::Address(address), too_many),
            }
        }
    }
    let user = match &key {
        Some(key) => match credentials::verify(&state, key).await {
            Ok(user) => Some(user),
            // A key the catalog cannot be asked about counts against the address: a route
            // that needs no user serves on, as it does without limits, and one that needs the
            // user answers 503 itself.
            Err(FrontendError::CatalogUnavailable(_) | FrontendError::CatalogDown { .. }) => None,
            Err(refused) => return refused.into_response(),
        },
        None => None,
    };
    let Some(client) = user.map(Client::User).or(address.map(Client::Address)) else {
        return next.run(request).await;
    };
    // The address, admitted already for its key, is not counted twice.
    let in_flight = match admitted.filter(|_| matches!(client, Client::Address(_))) {
        Some(in_flight) => in_flight,
        None => match limits.admit(client) {
            Ok(in_flight) => in_flight,
            Err(too_many) => return over_its_limit(client, too_many),
        },
    };
    // Then the users at its address together: a user over their own limit spends none of
    // what the others there share.
    let users_at = match (client, address) {
        (Client::User(_), Some(address)) => match limits.admit(Client::UsersAt(address)) {
            Ok(in_flight) => Some(in_flight),
            Err(too_many) => return over_its_limit(Client::UsersAt(address), too_many),
        },
        _ => None,
    };
    // In flight until the answer: a stream's handshake until it is upgraded (a stream open
    // for hours is not a request in flight; `--max-streams-per-client` caps those).
    let response = next.run(request).await;
    drop((in_flight, users_at));
    response
}

/// The 429 of a request `client` sent over its limit.
fn over_its_limit(client: Client, too_many: TooMany) -> Response {
    // Debug only: a client over its limit sends many of these.
    tracing::debug!(?client, "over its limit: 429");
    with_retry_after(
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests from this client; retry later",
        ),
        too_many.retry_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate_limit: u32, rate_burst: Option<u32>, max_in_flight: u32) -> Arc<Limits> {
        Arc::new(Limits::new(&LimitArgs {
            rate_limit,
            rate_burst,
            max_in_flight,
            max_connections_per_client: 0,
            new_users_per_minute: 0,
        }))
    }

    #[test]
    fn idle_buckets_are_dropped_at_most_once_a_period_of_each_limiter() {
        let limits = limits(1, None, 0);
        assert!(prune_due(&limits.rate_pruned));
        assert!(!prune_due(&limits.rate_pruned), "again at once");
        assert!(
            prune_due(&limits.new_users_pruned),
            "the other limiter's drop is its own"
        );
    }

    #[test]
    fn a_request_refused_for_its_place_in_flight_spends_none_of_its_rate() {
        let limits = limits(1, Some(2), 1);
        let a = Client::Address(IpAddr::from([10, 0, 0, 1]));
        let first = limits.admit(a).unwrap();
        for _ in 0..5 {
            assert!(limits.admit(a).is_err(), "one in flight already");
        }
        drop(first);
        assert!(limits.admit(a).is_ok(), "the burst's second token is left");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_one_by_its_address() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let counted = |text| client_address(ip(text));
        assert_eq!(counted("2001:db8:1:2::1"), counted("2001:db8:1:2:ffff::9"));
        assert_ne!(counted("2001:db8:1:2::1"), counted("2001:db8:1:3::1"));
        assert_eq!(counted("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(counted("10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn a_client_over_its_rate_is_refused_and_others_are_not() {
        let limits = limits(1, Some(2), 0);
        let address = |last| Client::Address(IpAddr::from([10, 0, 0, last]));
        let (a, b) = (address(1), address(2));
        assert!(limits.admit(a).is_ok());
        assert!(limits.admit(a).is_ok());
        let refused = limits.admit(a).err().expect("over the burst");
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_secs(1));
        assert!(limits.admit(b).is_ok(), "another client has its own bucket");
        assert!(limits.admit(Client::User(1)).is_ok(), "so has a user");
    }

    #[test]
    fn the_users_at_one_address_together_get_so_many_clients_worth() {
        let at = Client::UsersAt(IpAddr::from([10, 0, 0, 1]));
        let other = Client::UsersAt(IpAddr::from([10, 0, 0, 2]));
        let share = USERS_AT_SHARE as usize;
        // In flight: two each.
        let capped = limits(0, None, 2);
        let held: Vec<_> = (0..2 * share).map(|_| capped.admit(at).unwrap()).collect();
        assert!(capped.admit(at).is_err());
        assert!(capped.admit(other).is_ok());
        drop(held);
        assert!(capped.admit(at).is_ok());
        // The burst: one each.
        let rated = limits(1, Some(1), 0);
        for _ in 0..share {
            assert!(rated.admit(at).is_ok());
        }
        assert!(rated.admit(at).is_err());
        assert!(rated.admit(other).is_ok());
    }

    #[test]
    fn requests_in_flight_are_capped_per_client_and_released_when_done() {
        let limits = limits(0, None, 2);
        let a = Client::User(7);
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_err());
        assert!(limits.admit(Client::User(8)).is_ok());
        drop(first);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn no_limit_unless_configured() {
        let limits = limits(0, None, 0);
        assert!(!limits.enabled());
        let a = Client::Address(IpAddr::from([10, 0, 0, 1]));
        let held: Vec<_> = (0..1000).map(|_| limits.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
