//! `polhost config check FILE`: everything `run` checks before it starts
//! (the file, the overrides, each used service's fetcher, component, grant
//! and keys), and what each used service would run with. It never touches
//! the persistence directory.

use std::path::PathBuf;
use std::process::ExitCode;

use polhost::config::process_env;
use polhost::{Agent, Limits, ServicePlan};

use crate::{Failure, OverrideArgs, agent_failure, component_cache_dir_of_env, load_config_with};

pub(crate) async fn check(path: PathBuf, overrides: &OverrideArgs) -> Result<ExitCode, Failure> {
    let config = load_config_with(&path, &overrides.parse()?)?;
    crate::warn_about(&config, &path);
    let bundles_of = |service: &str| -> Vec<String> {
        config
            .bundles
            .iter()
            .filter(|b| b.service == service)
            .map(|b| b.name.clone())
            .collect()
    };
    let bundles: Vec<(String, Vec<String>)> = config
        .services
        .iter()
        .map(|s| (s.name.clone(), bundles_of(&s.name)))
        .collect();
    let mut builder = Agent::builder(config)
        .env(process_env)
        .fetchers(polhost_fetchers::registry());
    // The cache `run` uses, unless that would be inside the persistence
    // directory (no home directory): check creates nothing there.
    if let Some(cache) = component_cache_dir_of_env(&process_env) {
        builder = builder.component_cache(cache);
    }
    let plans = builder.check().await.map_err(|e| agent_failure(&path, e))?;
    println!("{}: valid; {} used service(s)", path.display(), plans.len());
    for plan in &plans {
        let used_by = bundles
            .iter()
            .find(|(service, _)| *service == plan.service)
            .map(|(_, bundles)| bundles.join(", "))
            .unwrap_or_default();
        print!("{}", describe(plan, &used_by));
    }
    Ok(ExitCode::SUCCESS)
}

/// One service's block.
fn describe(plan: &ServicePlan, bundles: &str) -> String {
    format!(
        "service {:?}\n  bundles: {bundles}\n  fetcher: {}\n  digest:  {}\n  grant:   {}\n  limits:  {}\n",
        plan.service,
        plan.fetcher,
        plan.digest,
        plan.grant.describe(),
        limits(&plan.limits)
    )
}

fn limits(limits: &Limits) -> String {
    format!(
        "memory {} MiB, {} requests per fetch, fetch timeout {} s, connect timeout {} s, \
         between bytes {} s",
        limits.memory_bytes >> 20,
        limits.max_requests,
        limits.fetch_timeout.as_secs(),
        limits.connect_timeout.as_secs(),
        limits.between_bytes_timeout.as_secs()
    )
}
