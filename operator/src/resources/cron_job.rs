//! The scheduled end-of-day report: a CronJob running `stocknet report` against the frontend
//! Service, a client of the public API with no access to the internal one, and the volume claim
//! that keeps its archive.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{KeyToPath, PersistentVolumeClaimVolumeSource};

use super::*;
use crate::crd::SecretKey;

/// Where the report pod keeps its archive.
const ARCHIVE_DIR: &str = "/reports";
/// Where it finds the webhook's key and the mail login, as files.
const WEBHOOK_KEY_DIR: &str = "/webhook";
const MAIL_LOGIN_DIR: &str = "/mail";

/// `<stocknet>-reports`: the CronJob and its archive's claim.
pub fn reports_name(sn: &StockNet) -> String {
    format!("{}-reports", sn.name_any())
}

/// The archive's claim, owned by the StockNet (it goes with it).
pub(super) fn reports_claim(sn: &StockNet) -> Result<PersistentVolumeClaim, SpecError> {
    let mut claim = data_claim(sn, Component::Reports, &sn.spec.reports.storage);
    claim.metadata = metadata(sn, reports_name(sn), Component::Reports)?;
    Ok(claim)
}

/// A volume of one `secret` key as the file `file`.
fn secret_file(volume: &str, secret: &SecretKey, file: &str) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: secret.key.clone(),
                path: file.into(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The CronJob: one run at a time (`Forbid`), a run that missed its time by over 10 minutes
/// skipped, three of each outcome kept for `kubectl logs`.
pub(super) fn reports_cron_job(sn: &StockNet) -> Result<CronJob, SpecError> {
    let reports = &sn.spec.reports;
    let frontend = format!(
        "http://{}.{}.svc:{FRONTEND_PORT}",
        name(sn, Component::Frontend),
        namespace(sn)?
    );
    let mut vars = vec![
        (env::REPORT_FRONTEND, frontend),
        (env::REPORT_DIR, ARCHIVE_DIR.to_owned()),
        (env::REPORT_DATE, reports.day.clone()),
    ];
    let mut volumes = vec![Volume {
        name: "archive".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: reports_name(sn),
            ..PersistentVolumeClaimVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![mount("archive", ARCHIVE_DIR, false)];
    if let Some(webhook) = &reports.webhook {
        vars.push((env::REPORT_WEBHOOK, webhook.url.clone()));
        vars.push((
            env::REPORT_WEBHOOK_SECRET_FILE,
            format!("{WEBHOOK_KEY_DIR}/key"),
        ));
        volumes.push(secret_file("webhook-key", &webhook.secret, "key"));
        mounts.push(mount("webhook-key", WEBHOOK_KEY_DIR, true));
    }
    if let Some(mail) = &reports.mail {
        vars.push((env::REPORT_SMTP_URL, mail.smtp_url.clone()));
        vars.push((env::REPORT_MAIL_FROM, mail.from.clone()));
        vars.push((env::REPORT_MAIL_TO, mail.to.join(",")));
        if let Some(credentials) = &mail.credentials {
            vars.push((
                env::REPORT_SMTP_CREDENTIALS_FILE,
                format!("{MAIL_LOGIN_DIR}/login"),
            ));
            volumes.push(secret_file("mail-login", credentials, "login"));
            mounts.push(mount("mail-login", MAIL_LOGIN_DIR, true));
        }
    }
    let container = Container {
        name: "report".into(),
        image: Some(sn.spec.image.clone()),
        image_pull_policy: Some(sn.spec.image_pull_policy.clone()),
        args: Some(vec!["report".into()]),
        env: Some(env(&vars)),
        resources: Some(resources(sn, Component::Reports)),
        security_context: Some(restricted()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let labels = labels(sn, Component::Reports);
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            restart_policy: Some("Never".into()),
            image_pull_secrets: pull_secrets(sn),
            automount_service_account_token: Some(false),
            security_context: Some(pod_security()),
            ..PodSpec::default()
        }),
    };
    Ok(CronJob {
        metadata: metadata(sn, reports_name(sn), Component::Reports)?,
        spec: Some(CronJobSpec {
            schedule: reports.schedule.clone(),
            time_zone: Some(reports.time_zone.clone()),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    // A delivery retries itself; a run that still fails is tried twice more.
                    backoff_limit: Some(2),
                    active_deadline_seconds: Some(1800),
                    template: pod,
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })
}
