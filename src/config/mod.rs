//! Configuration: LiteLLM proxy's `config.yaml`, read into raw structs (`litellm`), then checked
//! and resolved into the runtime [`Config`]. Every problem carries its YAML path; unknown keys
//! become warnings named by path, never errors; `os.environ/NAME` is resolved here, and an unset
//! provider key becomes [`Credential::Missing`] (an error only when that deployment is called).

pub mod litellm;
pub mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use secret::{Credential, Secret};

use crate::providers::ProviderKind;
use litellm::{RawConfig, RawModel};

/// The default HTTP root path.
pub const DEFAULT_ROOT_PATH: &str = "/ai-api";
/// The default body limit, in MiB (`general_settings.max_request_size_mb`).
pub const DEFAULT_MAX_REQUEST_SIZE_MB: f64 = 32.0;

/// How a deployment is picked within a model group (`router_settings.routing_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingStrategy {
    /// Random, weighted by `weight`, else `rpm`, else `tpm` (LiteLLM's default).
    #[default]
    SimpleShuffle,
    /// Fewest requests in flight.
    LeastBusy,
    /// Lowest recent latency.
    LatencyBased,
    /// Fewest tokens used in the last minute.
    UsageBased,
}

impl RoutingStrategy {
    pub const NAMES: [&'static str; 5] = [
        "simple-shuffle",
        "least-busy",
        "latency-based-routing",
        "usage-based-routing",
        "usage-based-routing-v2",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "simple-shuffle" => Some(RoutingStrategy::SimpleShuffle),
            "least-busy" => Some(RoutingStrategy::LeastBusy),
            "latency-based-routing" => Some(RoutingStrategy::LatencyBased),
            "usage-based-routing" | "usage-based-routing-v2" => Some(RoutingStrategy::UsageBased),
            _ => None,
        }
    }
}

/// Retries, fallbacks and cooldowns (`router_settings`, else `litellm_settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSettings {
    pub strategy: RoutingStrategy,
    /// Retries after the first attempt, on retryable failures only.
    pub num_retries: u32,
    /// Minimum wait before a retry.
    pub retry_after: Duration,
    /// Failures of one deployment within a minute tolerated before it cools down.
    pub allowed_fails: u32,
    pub cooldown_time: Duration,
    pub fallbacks: BTreeMap<String, Vec<String>>,
    pub context_window_fallbacks: BTreeMap<String, Vec<String>>,
    pub content_policy_fallbacks: BTreeMap<String, Vec<String>>,
    pub default_fallbacks: Vec<String>,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            strategy: RoutingStrategy::SimpleShuffle,
            num_retries: 0,
            retry_after: Duration::ZERO,
            allowed_fails: 3,
            cooldown_time: Duration::from_secs(5),
            fallbacks: BTreeMap::new(),
            context_window_fallbacks: BTreeMap::new(),
            content_policy_fallbacks: BTreeMap::new(),
            default_fallbacks: Vec::new(),
        }
    }
}

/// One deployment: a `model_list` entry, resolved.
#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    /// `model_info.id`, else `{model_name}-{index}`.
    pub id: String,
    /// The group it serves (`model_name`).
    pub model_name: String,
    pub provider: ProviderKind,
    /// The provider's model name (after `provider/`).
    pub upstream_model: String,
    pub api_key: Credential,
    pub api_base: Option<String>,
    pub api_version: Option<String>,
    pub organization: Option<String>,
    /// Answer with this text without any network call.
    pub mock_response: Option<String>,
    /// Bounds a whole call.
    pub timeout: Option<Duration>,
    /// Bounds the wait for each next chunk of a stream.
    pub stream_timeout: Option<Duration>,
    /// Retries for requests to this deployment's group (`max_retries`/`num_retries`).
    pub max_retries: Option<u32>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub weight: Option<f64>,
    pub max_parallel_requests: Option<u32>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
}

/// The runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub deployments: Vec<DeploymentConfig>,
    pub master_key: Option<Secret>,
    /// `general_settings.server_root_path`; the `SERVER_ROOT_PATH` variable wins over it.
    pub server_root_path: Option<String>,
    pub max_request_size_bytes: usize,
    pub require_auth_for_metrics: bool,
    pub log_raw_request_response: bool,
    pub disable_spend_logs: bool,
    pub disable_error_logs: bool,
    pub database_url: Option<String>,
    pub router: RouterSettings,
}

impl Config {
    /// The distinct providers the deployments use, in first-seen order.
    pub fn providers(&self) -> Vec<ProviderKind> {
        let mut seen = Vec::new();
        for d in &self.deployments {
            if !seen.contains(&d.provider) {
                seen.push(d.provider);
            }
        }
        seen
    }

    /// The distinct model groups, in config order.
    pub fn model_names(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for d in &self.deployments {
            if !seen.contains(&d.model_name.as_str()) {
                seen.push(&d.model_name);
            }
        }
        seen
    }
}

/// A problem that stops a config from loading, with its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found, for `ai-api check` and startup to print.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: invalid config", self.source_name)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// A loaded config and the warnings to report once.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads and loads a config file, resolving `os.environ/` from the process environment.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        problems: vec![ConfigProblem {
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    load_str(&text, &name, &|k| std::env::var(k).ok())
}

/// Loads a config from YAML text. `env` looks variables up (the process environment in
/// production, a map in tests).
pub fn load_str(
    text: &str,
    source_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let fail = |problems| ConfigError {
        source_name: source_name.to_string(),
        problems,
    };
    let mut warnings = Vec::new();
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut ignored = Vec::new();
        let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(yaml_path(&p));
        let wrapped = serde_ignored::Deserializer::new(de, &mut on_ignored);
        let parsed = serde_path_to_error::deserialize(wrapped);
        let raw = parsed.map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            fail(vec![ConfigProblem {
                path,
                message: e.into_inner().to_string(),
            }])
        })?;
        for key in ignored {
            warnings.push(format!(
                "{key}: unknown or not yet supported config key, ignored"
            ));
        }
        raw
    };
    let overlay = raw.environment_variables.clone();
    let lookup = |k: &str| overlay.get(k).cloned().or_else(|| env(k));
    let (config, problems) = resolve(raw, &lookup, &mut warnings);
    if problems.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(fail(problems))
    }
}

/// Formats a `serde_ignored` path the way our errors print YAML paths: `a.b[3].c`.
fn yaml_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", yaml_path(parent)),
        Path::Map { parent, key } => {
            let head = yaml_path(parent);
            if head.is_empty() {
                key.to_string()
            } else {
                format!("{head}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => yaml_path(parent),
    }
}

fn seconds(path: &str, v: Option<f64>, problems: &mut Vec<ConfigProblem>) -> Option<Duration> {
    let v = v?;
    match Duration::try_from_secs_f64(v) {
        Ok(d) if v > 0.0 => Some(d),
        _ => {
            problems.push(ConfigProblem {
                path: path.to_string(),
                message: format!("must be a positive number of seconds, got {v}"),
            });
            None
        }
    }
}

fn resolve(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> (Config, Vec<ConfigProblem>) {
    let mut problems = Vec::new();
    let RawConfig {
        model_list,
        general_settings,
        mut litellm_settings,
        mut router_settings,
        environment_variables: _,
    } = raw;
    let routing = router_settings.routing().or(litellm_settings.routing());

    let default_timeout = seconds(
        "router_settings.timeout",
        router_settings.timeout,
        &mut problems,
    )
    .or(seconds(
        "litellm_settings.request_timeout",
        litellm_settings.request_timeout,
        &mut problems,
    ));
    let default_stream_timeout = seconds(
        "router_settings.stream_timeout",
        router_settings.stream_timeout,
        &mut problems,
    );

    let mut deployments = Vec::with_capacity(model_list.len());
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in model_list.into_iter().enumerate() {
        if let Some(mut d) = resolve_model(i, m, env, warnings, &mut problems) {
            d.timeout = d.timeout.or(default_timeout);
            d.stream_timeout = d.stream_timeout.or(default_stream_timeout);
            if let Some(prev) = ids.insert(d.id.clone(), i) {
                problems.push(ConfigProblem {
                    path: format!("model_list[{i}].model_info.id"),
                    message: format!("id {:?} is already used by model_list[{prev}]", d.id),
                });
            }
            deployments.push(d);
        }
    }

    let master_key = match general_settings.master_key.as_deref() {
        None => None,
        Some(raw) => match secret::resolve_env(raw, env) {
            Ok(k) => Some(Secret::new(k)),
            Err(var) => {
                problems.push(ConfigProblem {
                    path: "general_settings.master_key".into(),
                    message: format!(
                        "environment variable {var} is not set (the master key must be set when the config names one)"
                    ),
                });
                None
            }
        },
    };
    let database_url = match general_settings.database_url.as_deref() {
        None => None,
        Some(raw) => match secret::resolve_env(raw, env) {
            Ok(v) => Some(v),
            Err(var) => {
                problems.push(ConfigProblem {
                    path: "general_settings.database_url".into(),
                    message: format!("environment variable {var} is not set"),
                });
                None
            }
        },
    };
    let max_mb = general_settings
        .max_request_size_mb
        .unwrap_or(DEFAULT_MAX_REQUEST_SIZE_MB);
    if !(max_mb > 0.0 && max_mb.is_finite()) {
        problems.push(ConfigProblem {
            path: "general_settings.max_request_size_mb".into(),
            message: format!("must be a positive number, got {max_mb}"),
        });
    }
    let router = resolve_router(
        routing,
        router_settings.routing_strategy.as_deref(),
        &deployments,
        &mut problems,
    );
    let config = Config {
        router,
        deployments,
        master_key,
        server_root_path: general_settings.server_root_path,
        max_request_size_bytes: (max_mb.max(0.0) * 1024.0 * 1024.0) as usize,
        require_auth_for_metrics: general_settings
            .require_auth_for_metrics_endpoint
            .unwrap_or(false),
        log_raw_request_response: litellm_settings.log_raw_request_response.unwrap_or(false),
        disable_spend_logs: general_settings.disable_spend_logs.unwrap_or(false),
        disable_error_logs: general_settings.disable_error_logs.unwrap_or(false),
        database_url,
    };
    (config, problems)
}

fn resolve_router(
    r: litellm::RawRouting,
    strategy: Option<&str>,
    deployments: &[DeploymentConfig],
    problems: &mut Vec<ConfigProblem>,
) -> RouterSettings {
    let d = RouterSettings::default();
    let strategy = match strategy {
        None => d.strategy,
        Some(s) => RoutingStrategy::parse(s).unwrap_or_else(|| {
            let best = RoutingStrategy::NAMES
                .iter()
                .map(|n| (strsim::levenshtein(s, n), *n))
                .min();
            let hint = match best {
                Some((dist, n)) if dist <= 4 => format!("did you mean {n:?}?"),
                _ => format!("supported: {}", RoutingStrategy::NAMES.join(", ")),
            };
            problems.push(ConfigProblem {
                path: "router_settings.routing_strategy".into(),
                message: format!("unknown routing strategy {s:?}; {hint}"),
            });
            d.strategy
        }),
    };
    let groups: Vec<&str> = {
        let mut g: Vec<&str> = deployments.iter().map(|d| d.model_name.as_str()).collect();
        g.dedup();
        g
    };
    let mut check_group = |path: String, name: &str| {
        if !deployments.iter().any(|d| d.model_name == name) {
            let best = groups
                .iter()
                .map(|g| (strsim::levenshtein(name, g), *g))
                .min();
            let hint = match best {
                Some((dist, g)) if dist <= 3 => format!("; did you mean {g:?}?"),
                _ => String::new(),
            };
            problems.push(ConfigProblem {
                path,
                message: format!("{name:?} is not a model_name of model_list{hint}"),
            });
        }
    };
    let mut table = |key: &str, v: Option<Vec<BTreeMap<String, Vec<String>>>>| {
        let mut out = BTreeMap::new();
        for (i, entry) in v.unwrap_or_default().into_iter().enumerate() {
            for (group, targets) in entry {
                check_group(format!("router_settings.{key}[{i}]"), &group);
                for (j, t) in targets.iter().enumerate() {
                    check_group(format!("router_settings.{key}[{i}].{group}[{j}]"), t);
                }
                out.insert(group, targets);
            }
        }
        out
    };
    let fallbacks = table("fallbacks", r.fallbacks);
    let context_window_fallbacks = table("context_window_fallbacks", r.context_window_fallbacks);
    let content_policy_fallbacks = table("content_policy_fallbacks", r.content_policy_fallbacks);
    let default_fallbacks = r.default_fallbacks.unwrap_or_default();
    for (i, g) in default_fallbacks.iter().enumerate() {
        check_group(format!("router_settings.default_fallbacks[{i}]"), g);
    }
    let retry_after = match r.retry_after {
        Some(v) if v >= 0.0 => Duration::try_from_secs_f64(v).unwrap_or(Duration::ZERO),
        Some(v) => {
            problems.push(ConfigProblem {
                path: "router_settings.retry_after".into(),
                message: format!("must be a non-negative number of seconds, got {v}"),
            });
            Duration::ZERO
        }
        None => d.retry_after,
    };
    RouterSettings {
        strategy,
        num_retries: r.num_retries.unwrap_or(d.num_retries),
        retry_after,
        allowed_fails: r.allowed_fails.unwrap_or(d.allowed_fails),
        cooldown_time: seconds("router_settings.cooldown_time", r.cooldown_time, problems)
            .unwrap_or(d.cooldown_time),
        fallbacks,
        context_window_fallbacks,
        content_policy_fallbacks,
        default_fallbacks,
    }
}

fn resolve_model(
    i: usize,
    m: RawModel,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<DeploymentConfig> {
    let at = |field: &str| format!("model_list[{i}].{field}");
    let RawModel {
        model_name,
        litellm_params: p,
        model_info,
    } = m;
    if model_name.trim().is_empty() {
        problems.push(ConfigProblem {
            path: at("model_name"),
            message: "must not be empty".into(),
        });
    }
    let (provider, upstream_model) = match ProviderKind::parse_model(&p.model) {
        Ok(pm) => pm,
        Err(msg) => {
            problems.push(ConfigProblem {
                path: at("litellm_params.model"),
                message: msg,
            });
            return None;
        }
    };
    // A literal or env-named key; none at all means the provider's standard variable.
    let api_key = match p.api_key.as_deref() {
        Some(raw) => match secret::resolve_env(raw, env) {
            Ok(k) => Credential::Key(Secret::new(k)),
            Err(var) => Credential::Missing { var },
        },
        None => provider.default_credential(env),
    };
    if let (Credential::Missing { var }, None) = (&api_key, &p.mock_response) {
        warnings.push(format!(
            "{}: environment variable {var} is not set; model {model_name:?} will answer a configuration error until it is",
            at("litellm_params.api_key")
        ));
    }
    let mut env_field = |field: &str, v: Option<String>| -> Option<String> {
        let raw = v?;
        match secret::resolve_env(&raw, env) {
            Ok(v) => Some(v),
            Err(var) => {
                problems.push(ConfigProblem {
                    path: at(&format!("litellm_params.{field}")),
                    message: format!("environment variable {var} is not set"),
                });
                None
            }
        }
    };
    let api_base = env_field("api_base", p.api_base);
    let api_version = env_field("api_version", p.api_version);
    let organization = env_field("organization", p.organization);
    if let Some(base) = &api_base
        && !(base.starts_with("http://") || base.starts_with("https://"))
    {
        problems.push(ConfigProblem {
            path: at("litellm_params.api_base"),
            message: format!("must be an http:// or https:// URL, got {base:?}"),
        });
    }
    if api_base.is_none() && p.mock_response.is_none() && provider.requires_api_base() {
        problems.push(ConfigProblem {
            path: at("litellm_params.api_base"),
            message: format!("provider {} needs an api_base", provider.name()),
        });
    }
    for (field, v) in [("weight", p.weight)] {
        if let Some(w) = v
            && !(w >= 0.0 && w.is_finite())
        {
            problems.push(ConfigProblem {
                path: at(&format!("litellm_params.{field}")),
                message: format!("must be a non-negative number, got {w}"),
            });
        }
    }
    let timeout = seconds(&at("litellm_params.timeout"), p.timeout, problems);
    let stream_timeout = seconds(
        &at("litellm_params.stream_timeout"),
        p.stream_timeout,
        problems,
    );
    let info = model_info.unwrap_or_default();
    Some(DeploymentConfig {
        id: info.id.unwrap_or_else(|| format!("{model_name}-{i}")),
        model_name,
        provider,
        upstream_model,
        api_key,
        api_base: api_base.map(|b| b.trim_end_matches('/').to_string()),
        api_version,
        organization,
        mock_response: p.mock_response,
        timeout,
        stream_timeout,
        max_retries: p.max_retries.or(p.num_retries),
        rpm: p.rpm,
        tpm: p.tpm,
        weight: p.weight,
        max_parallel_requests: p.max_parallel_requests,
        input_cost_per_token: p.input_cost_per_token.or(info.input_cost_per_token),
        output_cost_per_token: p.output_cost_per_token.or(info.output_cost_per_token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../config/config.yaml");

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_seed_config_loads_unchanged() {
        let env = env_of(&[("AI_API_MK", "sk-master"), ("OPENAI_API_KEY", "sk-o")]);
        let loaded = load_str(SEED, "seed", &env).unwrap();
        let c = &loaded.config;
        assert_eq!(c.deployments.len(), 7);
        assert_eq!(c.master_key, Some(Secret::new("sk-master")));
        assert!(c.disable_spend_logs && c.disable_error_logs);
        assert!(!c.log_raw_request_response);
        assert_eq!(
            c.providers(),
            vec![
                ProviderKind::OpenAi,
                ProviderKind::Anthropic,
                ProviderKind::Gemini
            ]
        );
        let claude = &c.deployments[2];
        assert_eq!(claude.upstream_model, "claude-sonnet-4-20250514");
        assert_eq!(
            claude.api_key,
            Credential::Missing {
                var: "ANTHROPIC_API_KEY".into()
            }
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("ANTHROPIC_API_KEY")),
            "{:?}",
            loaded.warnings
        );
        assert!(loaded.warnings.iter().all(|w| !w.contains("sk-o")));
    }

    #[test]
    fn an_unset_master_key_variable_is_fatal_and_named() {
        let err = load_str(SEED, "seed", &env_of(&[])).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "general_settings.master_key");
        assert!(err.problems[0].message.contains("AI_API_MK"));
    }

    #[test]
    fn a_typo_in_the_provider_names_its_path_and_a_suggestion() {
        let yaml =
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: opnai/gpt-4o\n";
        let err = load_str(yaml, "t", &env_of(&[])).unwrap_err();
        assert_eq!(
            err.problems[0].to_string(),
            "model_list[0].litellm_params.model: unknown provider \"opnai\"; did you mean \"openai\"?"
        );
    }

    #[test]
    fn a_wrong_type_names_its_path() {
        let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      rpm: lots\n";
        let err = load_str(yaml, "t", &env_of(&[])).unwrap_err();
        assert_eq!(err.problems[0].path, "model_list[0].litellm_params.rpm");
    }

    #[test]
    fn unknown_keys_are_warned_by_path() {
        let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_key: k\n      frobnicate: 1\nlitellm_settings:\n  drop_params: true\n";
        let loaded = load_str(yaml, "t", &env_of(&[])).unwrap();
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.starts_with("model_list[0].litellm_params.frobnicate:"))
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.starts_with("litellm_settings.drop_params:"))
        );
    }

    #[test]
    fn a_missing_api_key_uses_the_providers_standard_variable() {
        let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n";
        let loaded = load_str(yaml, "t", &env_of(&[("OPENAI_API_KEY", "sk-env")])).unwrap();
        assert_eq!(
            loaded.config.deployments[0].api_key,
            Credential::Key(Secret::new("sk-env"))
        );
    }

    #[test]
    fn routing_keys_are_read_from_either_section_router_settings_winning() {
        let yaml = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_key: k}\n  - model_name: b\n    litellm_params: {model: openai/y, api_key: k}\nlitellm_settings:\n  num_retries: 2\n  fallbacks: [{a: [b]}]\nrouter_settings:\n  num_retries: 4\n  routing_strategy: least-busy\n  cooldown_time: 30\n";
        let r = load_str(yaml, "t", &env_of(&[])).unwrap().config.router;
        assert_eq!(r.num_retries, 4);
        assert_eq!(r.strategy, RoutingStrategy::LeastBusy);
        assert_eq!(r.cooldown_time, Duration::from_secs(30));
        assert_eq!(r.fallbacks.get("a"), Some(&vec!["b".to_string()]));
        assert_eq!(r.allowed_fails, 3);
    }

    #[test]
    fn fallbacks_to_unknown_groups_and_unknown_strategies_are_errors() {
        let yaml = "model_list:\n  - model_name: gpt-4o\n    litellm_params: {model: openai/x, api_key: k}\nrouter_settings:\n  routing_strategy: least_busy\n  fallbacks: [{gpt-4o: [gpt-4p]}]\n";
        let e = load_str(yaml, "t", &env_of(&[])).unwrap_err();
        let text: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|p| p.starts_with("router_settings.routing_strategy")
                    && p.contains("least-busy")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.starts_with("router_settings.fallbacks[0].gpt-4o[0]")
                    && p.contains("did you mean \"gpt-4o\"")),
            "{text:?}"
        );
    }

    #[test]
    fn yaml_1_1_booleans_are_read_like_litellm() {
        let yaml = "general_settings:\n  disable_spend_logs: yes\n  disable_error_logs: True\n";
        let c = load_str(yaml, "t", &env_of(&[])).unwrap().config;
        assert!(c.disable_spend_logs && c.disable_error_logs);
    }
}
