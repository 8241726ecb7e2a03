"""The CI workflow: valid for GitHub Actions, with lint, tests on real services, image build and scan, gated deploy."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy.support import ROOT, load_yaml, run, tool
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, require_postgres

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def test_workflow_validates_against_the_github_workflow_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: true\n")
    assert run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", broken).returncode != 0


def test_the_release_path_goes_through_staging_and_an_approval() -> None:
    """build → staging (deploy, end-to-end check, rollback on failure) → production behind its environment."""
    jobs = load_yaml(WORKFLOW)["jobs"]
    assert set(jobs) == {"lint", "test", "image", "staging", "production"}
    assert set(jobs["test"]["services"]) == {"postgres", "redis"}
    assert any(step.get("run") == "bash .ci/run" for step in jobs["test"]["steps"])
    assert any("trivy" in step.get("uses", "") for step in jobs["image"]["steps"])
    staging, production = jobs["staging"], jobs["production"]
    assert staging["needs"] == ["test", "image"]
    assert production["needs"] == ["staging"]
    for job, environment in ((staging, "staging"), (production, "production")):
        assert "refs/heads/main" in job["if"] and "github.event_name == 'push'" in job["if"]
        assert job["environment"]["name"] == environment
        assert job["concurrency"]["cancel-in-progress"] is False
        script = next(step["run"] for step in job["steps"] if "deploy/deploy.sh migrate" in step.get("run", ""))
        assert "deploy/deploy.sh rollback" in script
    assert staging["env"]["K8S_OVERLAY"] == "deploy/k8s/overlays/staging"
    assert "deploy/deploy.sh e2e" in next(s["run"] for s in staging["steps"] if "e2e" in s.get("run", ""))


def test_the_workflow_postgres_is_the_major_the_suite_runs() -> None:
    image = load_yaml(WORKFLOW)["jobs"]["test"]["services"]["postgres"]["image"]
    require_postgres()
    server = subprocess.run(
        [
            tool("psql"),
            "-h",
            POSTGRES_HOST,
            "-p",
            str(POSTGRES_PORT),
            "-U",
            "postgres",
            "-Atc",
            "SHOW server_version_num",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    suite_major = int(server.stdout) // 10000
    assert image.startswith(f"postgres:{suite_major}-"), image


def test_every_action_is_pinned() -> None:
    jobs = load_yaml(WORKFLOW)["jobs"]
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert "@" in step["uses"], step["uses"]
                assert not step["uses"].endswith(("@main", "@master")), step["uses"]
