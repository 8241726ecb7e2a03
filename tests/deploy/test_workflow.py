"""The CI workflow: valid for GitHub Actions, with lint, tests on real services, image build and scan, gated deploy."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.support import ROOT, load_yaml, run, tool

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def test_workflow_validates_against_the_github_workflow_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: true\n")
    assert run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", broken).returncode != 0


def test_jobs_and_the_deploy_gate() -> None:
    jobs = load_yaml(WORKFLOW)["jobs"]
    assert set(jobs) == {"lint", "test", "image", "deploy"}
    assert set(jobs["test"]["services"]) == {"postgres", "redis"}
    assert any(step.get("run") == "bash .ci/run" for step in jobs["test"]["steps"])
    assert any("trivy" in step.get("uses", "") for step in jobs["image"]["steps"])
    deploy = jobs["deploy"]
    assert deploy["needs"] == ["test", "image"]
    assert "refs/heads/main" in deploy["if"]
    assert "github.event_name == 'push'" in deploy["if"]
    assert deploy["environment"]["name"] == "production"
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert "@" in step["uses"], step["uses"]
                assert not step["uses"].endswith(("@main", "@master")), step["uses"]
