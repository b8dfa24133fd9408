//! Driving the library in this process, as an embedder does: an agent
//! built from a configuration text and descriptors, its events collected.
//! Tests of the agent's behaviour assert on these events and on the
//! agent's state, not on a child process's log lines.
#![allow(dead_code)]

use std::time::Duration;

use polhost::config::Config;
use polhost::{
    Activation, Agent, AgentBuilder, ComponentSource, Event, FailureKind, FetcherDescriptor, Limits,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A descriptor for the component file at `path`, serving `service_type`,
/// with a grant of its service URL only.
pub fn plugin(service_type: &str, path: &str) -> FetcherDescriptor {
    FetcherDescriptor::new(
        service_type,
        ComponentSource::File {
            path: path.into(),
            digest: None,
        },
    )
}

/// An agent for `yaml` (its `persistence_directory` set to `state` unless
/// the text sets it), with the standard fetchers, `extra` on top, and
/// `limits`.
pub async fn agent(
    yaml: &str,
    state: &std::path::Path,
    extra: Vec<FetcherDescriptor>,
    limits: Limits,
) -> Result<Agent, polhost::AgentError> {
    let mut builder = builder(yaml, state, &[]).limits(limits);
    for descriptor in extra {
        builder = builder.fetcher(descriptor);
    }
    builder.build().await
}

/// A builder for `yaml` (its `persistence_directory` set to `state`
/// unless the text sets it) with the standard fetchers, `${VAR}` in the
/// text and the fetchers' granted variables looked up in `env` only.
pub fn builder(yaml: &str, state: &std::path::Path, env: &[(&str, &str)]) -> AgentBuilder {
    let mut text = yaml.to_string();
    if !text.contains("persistence_directory") {
        text.push_str(&format!("\npersistence_directory: {}\n", state.display()));
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let config = Config::parse(&text, &lookup).expect("test config parses");
    Agent::builder(config)
        .env(lookup)
        .fetchers(polhost_fetchers::registry())
}

/// Runs `agent.run_once()`: how many bundles are not active afterwards
/// (what `polhost run --once` exits 1 for), and every event announced.
pub async fn poll_counting(agent: &Agent) -> (usize, Vec<Event>) {
    let mut events = agent.subscribe();
    let inactive = agent.run_once().await;
    (inactive, drain(&mut events))
}

/// Receives events into `seen` until `done` holds for them, or panics
/// after `timeout` saying `what` and showing them.
pub async fn collect_until(
    events: &mut broadcast::Receiver<Event>,
    seen: &mut Vec<Event>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(seen) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            Ok(Err(e)) => panic!("waiting for {what}: {e}"),
            Err(_) => panic!("waited {timeout:?} for {what}; saw {seen:#?}"),
        }
    }
}

/// Panics if `secret` is in any of `events` (a message, a field, ...).
pub fn assert_in_no_event(events: &[Event], secret: &str) {
    for event in events {
        assert!(
            !format!("{event:?}").contains(secret),
            "a secret is in an event: {event:?}"
        );
    }
}

/// Runs `agent.run_once()` and returns every event it announced.
pub async fn poll_once(agent: &Agent) -> Vec<Event> {
    let mut events = agent.subscribe();
    agent.run_once().await;
    drain(&mut events)
}

/// The events received so far.
pub fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    seen
}

/// The failure announced for `bundle`, if any: (kind, message, fetcher).
pub fn failure(events: &[Event], bundle: &str) -> Option<(FailureKind, String, String)> {
    events.iter().find_map(|event| match event {
        Event::Failed {
            bundle: b,
            kind,
            message,
            fetcher,
            ..
        } if b == bundle => Some((*kind, message.clone(), fetcher.clone())),
        _ => None,
    })
}

/// The activation announced for `bundle`, if any.
pub fn activation<'a>(events: &'a [Event], bundle: &str) -> Option<&'a Activation> {
    events.iter().find_map(|event| match event {
        Event::Activated(activation) if activation.bundle == bundle => Some(activation),
        _ => None,
    })
}

/// Runs the agent in the background until the returned token is
/// cancelled (or dropped with the test).
pub fn run_in_background(agent: std::sync::Arc<Agent>) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { agent.run(token).await });
    shutdown
}

/// Waits up to `timeout` for an event that `matches`.
pub async fn wait_for_event(
    events: &mut broadcast::Receiver<Event>,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if matches(&event) => return event,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("waiting for {what}: {e}"),
            Err(_) => panic!("waited {timeout:?} for {what}"),
        }
    }
}
