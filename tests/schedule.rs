//! The StressTestSchedule controller against the in-repo API test server, with an injected
//! clock: no waiting for real cron times. The test plays the StressTest controller (it writes
//! each run's finished status by hand); the schedule controller runs in-process through
//! `stampede::schedule::run_schedules_with`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use stampede::schedule::cron::Cron;
use stampede::schedule::{ScheduleOptions, StressTestSchedule, run_schedules_with};
use stampede::spec::StressTest;
use support::apiserver::ApiServer;

const CRDS: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stresstest.yaml"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/crds/stresstestschedule.yaml"),
];
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/schedule.yaml");

const SCHEDULE: &str = r#"
apiVersion: stampede.dev/v1alpha1
kind: StressTestSchedule
metadata:
  name: every5
spec:
  schedule: "*/5 * * * *"
  successfulRunsHistoryLimit: 2
  regression: {maxQpsDropPercent: 10, maxP99IncreasePercent: 20, maxRecallDrop: 0.02}
  template:
    metadata:
      labels: {team: search}
    spec:
      target: {address: "127.0.0.1:19530"}
      collection: {name: t_schedule, dimension: 8}
      stages: [{duration: 5s, users: 2, spawnRate: 2}]
      sla: {maxP99: 250ms}
"#;

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<Timestamp>>);

impl TestClock {
    fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap() = t;
    }
}

struct Env {
    server: ApiServer,
    clock: TestClock,
    controller: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let server = ApiServer::start();
        for crd in CRDS {
            server.kubectl_ok(&["apply", "-f", crd]);
        }
        let clock = TestClock(Arc::new(Mutex::new(Timestamp::now())));
        let c = clock.clone();
        let opts = ScheduleOptions {
            namespace: Some("default".to_string()),
            clock: Arc::new(move || *c.0.lock().unwrap()),
            max_requeue: Duration::from_millis(100),
        };
        let client = server.client();
        let controller = tokio::spawn(async move {
            if let Err(e) = run_schedules_with(client, opts).await {
                panic!("schedule controller stopped: {e}");
            }
        });
        Env {
            server,
            clock,
            controller,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn apply(&self, name: &str, body: &str) {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, body).unwrap();
        self.server
            .kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn schedules(&self) -> Api<StressTestSchedule> {
        Api::namespaced(self.server.client(), "default")
    }

    fn tests(&self) -> Api<StressTest> {
        Api::namespaced(self.server.client(), "default")
    }

    /// The raw stored object (status fields the Rust types may not know included).
    fn raw(&self, resource: &str, name: &str) -> Value {
        self.server
            .get("stampede.dev", resource, "default", name)
            .unwrap_or(Value::Null)
    }

    async fn run_names(&self, schedule: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .tests()
            .list(&ListParams::default().labels(&format!("stampede.dev/schedule={schedule}")))
            .await
            .unwrap()
            .items
            .iter()
            .map(|t| t.name_any())
            .collect();
        names.sort();
        names
    }

    /// Plays the StressTest controller: the run ends Succeeded with these figures.
    async fn finish_run(&self, name: &str, qps_at_sla: f64, p99_ms: f64, recall: f64) {
        let status = json!({"status": {
            "phase": "Succeeded",
            "observedGeneration": 1,
            "totals": {"qps": qps_at_sla * 1.1, "p95": "20ms", "p99": format!("{p99_ms}ms"),
                       "requests": 100000, "failures": 0, "errorRatio": 0.0, "p50Ms": 5.0,
                       "p95Ms": 20.0, "p99Ms": p99_ms, "maxMs": 300.0},
            "peak": {"stage": 1, "users": 2, "qps": qps_at_sla * 1.1},
            "sla": {"verdict": "PASS", "passed": true, "capacityAtSlaQps": qps_at_sla,
                    "checks": [{"name": "maxP99", "target": "≤ 250 ms",
                                "observed": format!("{p99_ms} ms"), "passed": true}]},
            "recall": recall
        }});
        self.tests()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// Events (events.k8s.io/v1) recorded on the schedule `name`, as (reason, note).
    fn events_of(&self, name: &str) -> Vec<(String, String)> {
        self.server
            .list("events.k8s.io", "events")
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

/// Polls `check` every 50 ms until it returns Some, for at most 15 s.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instant_after(t: Timestamp) -> Timestamp {
    Cron::parse("*/5 * * * *")
        .unwrap()
        .next_after(t, &k8s_openapi::jiff::tz::TimeZone::UTC)
        .unwrap()
}

fn run_name(t: Timestamp) -> String {
    format!("every5-{}", t.as_second())
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_start_get_verdicts_skip_and_are_pruned_as_the_clock_advances() {
    let env = Env::start();
    env.apply("every5", SCHEDULE);
    let created: Timestamp =
        env.raw("stresstestschedules", "every5")["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    env.clock.set(created);

    // Before the first instant: nothing; Ready and the next instant in status.
    let first = instant_after(created);
    let next_time = wait_for("status.nextScheduleTime", || async {
        let s = env.raw("stresstestschedules", "every5");
        s["status"]["nextScheduleTime"].as_str().map(str::to_string)
    })
    .await;
    assert_eq!(next_time.parse::<Timestamp>().unwrap(), first);
    assert!(env.run_names("every5").await.is_empty());

    // Past the first instant: a run with the label and a controller ownerReference.
    env.clock.set(plus(first, 1));
    let run1 = run_name(first);
    wait_for("the first run", || async {
        (env.run_names("every5").await == vec![run1.clone()]).then_some(())
    })
    .await;
    let raw1 = env.raw("stresstests", &run1);
    assert_eq!(
        raw1["metadata"]["labels"]["stampede.dev/schedule"],
        "every5"
    );
    assert_eq!(raw1["metadata"]["labels"]["team"], "search");
    let owner = &raw1["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StressTestSchedule");
    assert_eq!(owner["name"], "every5");
    assert_eq!(owner["controller"], true);
    assert_eq!(
        owner["uid"],
        env.raw("stresstestschedules", "every5")["metadata"]["uid"]
    );
    assert_eq!(raw1["spec"]["collection"]["name"], "t_schedule");
    let status = wait_for("status.active", || async {
        let s = env.raw("stresstestschedules", "every5")["status"].clone();
        (s["active"] == json!([run1])).then_some(s)
    })
    .await;
    assert_eq!(
        status["lastScheduleTime"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .unwrap(),
        first
    );

    // The first run succeeds: it has no baseline and becomes the baseline.
    env.finish_run(&run1, 1000.0, 40.0, 0.95).await;
    wait_for("the verdict of the first run", || async {
        let r = env.raw("stresstests", &run1);
        (r["status"]["regression"]["verdict"] == "NoBaseline").then_some(())
    })
    .await;

    // The second run is 30 % slower: Regressed, named in the run, the schedule and an Event.
    let second = instant_after(first);
    env.clock.set(plus(second, 1));
    let run2 = run_name(second);
    wait_for("the second run", || async {
        env.run_names("every5").await.contains(&run2).then_some(())
    })
    .await;
    env.finish_run(&run2, 700.0, 41.0, 0.95).await;
    let regressed = wait_for("Regressed=True", || async {
        let s = env.raw("stresstestschedules", "every5");
        s["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Regressed" && c["status"] == "True")
            .cloned()
    })
    .await;
    let expected = format!(
        "run {run2} regressed against run {run1}: QPS at SLA dropped 30.0 % (700 vs 1000 requests/s; limit 10 %)"
    );
    assert_eq!(regressed["reason"], "Regressed");
    assert_eq!(regressed["message"], expected.as_str());
    let verdict = env.raw("stresstests", &run2)["status"]["regression"].clone();
    assert_eq!(verdict["verdict"], "Regressed");
    assert_eq!(verdict["baseline"], run1.as_str());
    assert_eq!(verdict["checks"][0]["metric"], "qpsAtSla");
    assert_eq!(verdict["checks"][0]["change"], -30.0);
    assert_eq!(verdict["checks"][0]["regressed"], true);
    let status = env.raw("stresstestschedules", "every5")["status"].clone();
    assert_eq!(status["lastRun"]["name"], run2.as_str());
    assert_eq!(status["lastRun"]["verdict"], "Regressed");
    assert_eq!(status["lastRun"]["qps"], 700.0);
    assert_eq!(status["lastSuccessfulRun"]["name"], run2.as_str());
    let trend: Vec<(String, f64)> = status["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["qpsAtSla"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(trend, vec![(run1.clone(), 1000.0), (run2.clone(), 700.0)]);
    let events = wait_for("the Regressed Event", || async {
        let ev = env.events_of("every5");
        ev.iter().any(|(r, _)| r == "Regressed").then_some(ev)
    })
    .await;
    assert!(
        events.contains(&("Regressed".to_string(), expected.clone())),
        "{events:?}"
    );

    // The third run starts and stays active; the fourth instant is skipped (Forbid).
    let third = instant_after(second);
    env.clock.set(plus(third, 1));
    let run3 = run_name(third);
    wait_for("the third run", || async {
        env.run_names("every5").await.contains(&run3).then_some(())
    })
    .await;
    let fourth = instant_after(third);
    env.clock.set(plus(fourth, 1));
    let skipped = wait_for("status.lastSkipped", || async {
        let s = env.raw("stresstestschedules", "every5");
        let skipped = s["status"]["lastSkipped"].clone();
        (skipped["reason"] == "ConcurrencyForbid").then_some(skipped)
    })
    .await;
    assert_eq!(
        skipped["time"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .unwrap(),
        fourth
    );
    assert_eq!(
        env.run_names("every5").await,
        vec![run1.clone(), run2.clone(), run3.clone()]
    );
    let forbid_event = wait_for("the ConcurrencyForbid Event", || async {
        env.events_of("every5")
            .into_iter()
            .find(|(r, _)| r == "ConcurrencyForbid")
    })
    .await;
    assert!(forbid_event.1.contains(&run3), "{forbid_event:?}");

    // The third run succeeds: three successful runs, history limit 2, the oldest goes.
    env.finish_run(&run3, 720.0, 40.0, 0.95).await;
    wait_for("the first run deleted", || async {
        (env.run_names("every5").await == vec![run2.clone(), run3.clone()]).then_some(())
    })
    .await;
    let status = wait_for("NoRegression for the third run", || async {
        let s = env.raw("stresstestschedules", "every5")["status"].clone();
        (s["lastRun"]["verdict"] == "NoRegression").then_some(s)
    })
    .await;
    assert_eq!(status["trend"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["trend"][0]["name"], run1.as_str());
    assert_eq!(status["active"], json!([]));

    // Suspended: the next instant starts nothing.
    env.schedules()
        .patch(
            "every5",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    wait_for("Ready=False Suspended", || async {
        let s = env.raw("stresstestschedules", "every5");
        s["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["reason"] == "Suspended")
            .then_some(())
    })
    .await;
    let fifth = instant_after(fourth);
    env.clock.set(plus(fifth, 1));
    wait_for("the suspended instant recorded", || async {
        let s = env.raw("stresstestschedules", "every5");
        (s["status"]["lastSkipped"]["reason"] == "Suspended").then_some(())
    })
    .await;
    assert_eq!(env.run_names("every5").await, vec![run2, run3]);

    // kubectl shows the schedule by its short name.
    let out = env.server.kubectl_ok(&["get", "sts"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "SUSPEND", "LAST", "RUN", "VERDICT", "LAST", "SCHEDULE", "AGE"
        ]
    );
    assert!(out.contains("every5   */5 * * * *   true"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_deletes_the_active_run_for_the_new_one() {
    let env = Env::start();
    env.apply(
        "every5",
        &SCHEDULE.replace("  schedule:", "  concurrencyPolicy: Replace\n  schedule:"),
    );
    let created: Timestamp =
        env.raw("stresstestschedules", "every5")["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    let first = instant_after(created);
    env.clock.set(plus(first, 1));
    wait_for("the first run", || async {
        (env.run_names("every5").await == vec![run_name(first)]).then_some(())
    })
    .await;
    let second = instant_after(first);
    env.clock.set(plus(second, 1));
    wait_for("the first run replaced by the second", || async {
        (env.run_names("every5").await == vec![run_name(second)]).then_some(())
    })
    .await;
    let replaced = wait_for("the ReplacedRun Event", || async {
        env.events_of("every5")
            .into_iter()
            .find(|(r, _)| r == "ReplacedRun")
    })
    .await;
    assert_eq!(
        replaced.1,
        format!(
            "deleted active run {} for run {} (concurrencyPolicy Replace)",
            run_name(first),
            run_name(second)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_schedule_applies_with_kubectl_and_reports_its_next_instant() {
    let env = Env::start();
    env.server.kubectl_ok(&["apply", "-f", EXAMPLE]);
    let next = wait_for("status.nextScheduleTime", || async {
        let s = env.raw("stresstestschedules", "nightly-capacity");
        s["status"]["nextScheduleTime"].as_str().map(str::to_string)
    })
    .await;
    // 02:00 in Berlin is 00:00 or 01:00 UTC, depending on the season.
    let next: Timestamp = next.parse().unwrap();
    let berlin = next.to_zoned(stampede::schedule::cron::time_zone("Europe/Berlin").unwrap());
    assert_eq!((berlin.hour(), berlin.minute()), (2, 0));
    let ready = env.raw("stresstestschedules", "nightly-capacity")["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(
        ready["message"],
        "runs start at `0 2 * * *` (Europe/Berlin)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_schedule_says_which_field_of_the_cron_is_wrong() {
    let env = Env::start();
    env.apply(
        "every5",
        &SCHEDULE.replace("\"*/5 * * * *\"", "\"*/5 * * * MON-FOO\""),
    );
    let ready = wait_for("Ready=False", || async {
        let s = env.raw("stresstestschedules", "every5");
        s["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready" && c["status"] == "False")
            .cloned()
    })
    .await;
    assert_eq!(ready["reason"], "InvalidSpec");
    assert_eq!(
        ready["message"],
        "spec.schedule: the day-of-week field `MON-FOO`: `FOO` is not a number or a name (SUN-SAT)"
    );
    let event = wait_for("the InvalidSpec Event", || async {
        env.events_of("every5")
            .into_iter()
            .find(|(r, _)| r == "InvalidSpec")
    })
    .await;
    assert!(event.1.contains("MON-FOO"), "{event:?}");
}
