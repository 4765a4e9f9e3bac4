//! TLS and SASL to Kafka (SASL_SSL with SCRAM-SHA-512) and TLS to PostgreSQL
//! (`sslmode=verify-full`), on the real servers, with certificates this test makes with openssl:
//! the detector publishes (SASL password as -X) and the sink stores (password in a --kafka-config
//! file) through both; a wrong SASL password and a server
//! certificate from another CA are refused with one clear error. Alone in its file: it turns TLS
//! on in the shared PostgreSQL (a reload; off again at the end) and starts a broker of its own.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pipeline_tests::*;
use sqlx::{Connection, PgConnection};

const STORE_PASSWORD: &str = "keystore-pw-7Hq";
const SCRAM_USER: &str = "pipeline-client";
const SCRAM_PASSWORD: &str = "scram-pw-Zt9k";
/// The secure broker's SASL_SSL listener (scripts/services.sh kafka-secure).
const SECURE_BROKER: &str = "127.0.0.1:9194";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = run(Command::new("openssl").current_dir(dir).args(args), Duration::from_secs(60))?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A CA named `ca`, and `names` signed by it for 127.0.0.1 and localhost.
fn make_certificates(dir: &Path, ca: &str, names: &[&str]) -> Result<()> {
    let subject = format!("/CN=pipeline test {ca}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &subject,
        ],
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    for name in names {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/CN=localhost",
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        )?;
    }
    Ok(())
}

/// TLS on in the shared PostgreSQL, with this certificate; off again when dropped.
struct PgTls;

impl PgTls {
    async fn enable(cert: &Path, key: &Path) -> Result<Self> {
        // The server reads its key as the postgres user, and refuses one others may read.
        for f in [cert, key] {
            ensure!(Command::new("chown").arg("postgres:").arg(f).status()?.success(), "chown {}", f.display());
        }
        ensure!(Command::new("chmod").arg("600").arg(key).status()?.success());
        let mut admin = PgConnection::connect(&admin_db_url()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()))).execute(&mut admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()))).execute(&mut admin).await?;
        sqlx::query("ALTER SYSTEM SET ssl = on").execute(&mut admin).await?;
        sqlx::query("SELECT pg_reload_conf()").execute(&mut admin).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tls = format!("{}?sslmode=require", admin_db_url());
        PgConnection::connect(&tls).await.context("PostgreSQL did not take the certificate (see its log)")?;
        Ok(PgTls)
    }
}

impl Drop for PgTls {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &admin_db_url(),
                "-qc",
                "ALTER SYSTEM RESET ssl",
                "-c",
                "ALTER SYSTEM RESET ssl_cert_file",
                "-c",
                "ALTER SYSTEM RESET ssl_key_file",
                "-c",
                "SELECT pg_reload_conf()",
            ])
            .status();
    }
}

/// The secure broker, stopped when dropped.
struct SecureBroker;

impl SecureBroker {
    fn start(tls: &Path) -> Result<Self> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/services.sh"))
            .args(["start", "kafka-secure"])
            .env("KAFKA_TLS_DIR", tls)
            .status()?;
        ensure!(status.success(), "starting the secure broker failed");
        Ok(SecureBroker)
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = services(&["stop", "kafka-secure"], false);
    }
}

/// The librdkafka properties of a SASL_SSL client.
fn sasl_ssl(ca: &Path, password: &str) -> Vec<String> {
    vec![
        "security.protocol=SASL_SSL".to_string(),
        "sasl.mechanisms=SCRAM-SHA-512".to_string(),
        format!("sasl.username={SCRAM_USER}"),
        format!("sasl.password={password}"),
        format!("ssl.ca.location={}", ca.display()),
    ]
}

/// As `-X` flags, on the command line.
fn sasl_ssl_flags(ca: &Path, password: &str) -> Vec<String> {
    sasl_ssl(ca, password).into_iter().flat_map(|p| ["-X".to_string(), p]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_and_sink_through_sasl_ssl_and_verified_tls() -> Result<()> {
    // Where the postgres user can read the server's certificate (the default temp folder may be
    // under root's home).
    let dir = TempDir::new_in(Path::new("/tmp"), "tls")?;
    let tls = dir.join("");
    make_certificates(&tls, "ca", &["broker", "postgres"])?;
    make_certificates(&tls, "other-ca", &[])?;
    openssl(
        &tls,
        &[
            "pkcs12",
            "-export",
            "-in",
            "broker.crt",
            "-inkey",
            "broker.key",
            "-certfile",
            "ca.pem",
            "-name",
            "broker",
            "-out",
            "broker.p12",
            "-passout",
            &format!("pass:{STORE_PASSWORD}"),
        ],
    )?;
    std::fs::write(tls.join("keystore.password"), STORE_PASSWORD)?;
    std::fs::write(tls.join("scram.user"), SCRAM_USER)?;
    std::fs::write(tls.join("scram.password"), SCRAM_PASSWORD)?;
    let _broker = SecureBroker::start(&tls)?;
    let _pg = PgTls::enable(&tls.join("postgres.crt"), &tls.join("postgres.key")).await?;
    let ca = tls.join("ca.pem");

    let db = TestDb::create("tls").await?;
    let verified = |root: &Path| format!("{}?sslmode=verify-full&sslrootcert={}", db.url, root.display());
    let db_url = verified(&ca);
    let out = run(Command::new(bin("sink")).arg("migrate").env("DATABASE_URL", &db_url), Duration::from_secs(60))?;
    ensure!(out.status.success(), "migrate over TLS: {}", String::from_utf8_lossy(&out.stderr));

    // A certificate the client does not trust: refused, in one line.
    let out =
        run(Command::new(bin("sink")).arg("migrate").env("DATABASE_URL", verified(&tls.join("other-ca.pem"))), Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains(" ERROR ")).count(), 1, "{stderr}");

    // A wrong SASL password: the detector does not start, and does not show it.
    let clip = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, Some(3))?;
    let frames = ffprobe_frame_count(&clip)? as i64;
    let topic = unique("secure");
    let detector = |password: &str| {
        run(
            Command::new(bin("detector"))
                .arg("--source")
                .arg(&clip)
                .args(["--model", model().to_str().unwrap(), "--camera-id", "vault", "--topic", &topic, "--brokers", SECURE_BROKER])
                .args(sasl_ssl_flags(&ca, password)),
            Duration::from_secs(300),
        )
    };
    let out = detector("not-the-password")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");

    // The sink's password in a properties file, off the command line.
    let properties = dir.join("client.properties");
    std::fs::write(&properties, sasl_ssl(&ca, SCRAM_PASSWORD).join("\n"))?;
    let sink = SinkProcess::start_on(SECURE_BROKER, &db_url, &topic, &unique("group"), &["--kafka-config", properties.to_str().unwrap()])?;
    let out = detector(SCRAM_PASSWORD)?;
    ensure!(out.status.success(), "detector over SASL_SSL: {}", String::from_utf8_lossy(&out.stderr));
    let mut conn = PgConnection::connect(&db_url).await.context("the test's own verified connection")?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", frames, Duration::from_secs(120)).await?;
    // The sink's connections are encrypted.
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = current_database() AND s.ssl AND s.pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await?;
    let log = sink.stop()?;
    assert_eq!(stored, frames, "{log}");
    assert!(encrypted >= 1, "no encrypted connection from the sink:\n{log}");
    for secret in [SCRAM_PASSWORD, STORE_PASSWORD, "pipeline:pipeline"] {
        assert!(!log.contains(secret) && !String::from_utf8_lossy(&out.stderr).contains(secret), "{secret} shown");
    }
    Ok(())
}
