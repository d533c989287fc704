"""node.config: a node's YAML config, refused with the field, the rule as written and the value given."""

import yaml
from typer.testing import CliRunner

from flows.cli import app


def test_a_bad_institution_name_shows_the_pattern_unmangled_the_value_and_a_hint(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "institution": "Cedar Savings",
                "schema": "credit_default",
                "extract": {"path": "credit.csv"},
                "tls": {"ca": "ca.crt", "cert": "n.crt", "key": "n.key"},
            }
        )
    )
    result = CliRunner().invoke(app, ["node", "serve", "--config", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (
        f"invalid node config {path}:\n  institution: String should match pattern '^[a-z0-9][a-z0-9_-]{{0,62}}$' "
        f"(got 'Cedar Savings'); a name is lower-case letters, digits, '_' and '-', starting with a letter or "
        f"digit (e.g. cedar_savings)"
    ) in result.output, result.output
