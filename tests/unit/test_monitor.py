"""The monitoring flow's consortium: each institution's monitoring_path in simulation, said plainly when absent; across
silos the nodes, each reading the monitoring extract its own config names (the coordinator names no path)."""

from pathlib import Path

import pytest

from flows.config import ConfigError, parse_config
from flows.monitor import monitoring_consortium


def _config(**institution):
    return parse_config({"model_name": "m", "institutions": [{"name": "alder_bank", **institution}]}, Path("/data"))


def test_each_institution_is_monitored_on_its_monitoring_path_with_its_renames():
    config = _config(path="a.csv", monitoring_path="month/a.csv", columns={"limit": "LIMIT_BAL"})
    [extract] = monitoring_consortium(config).extracts
    assert extract.path == Path("/data/month/a.csv") and extract.columns == {"limit": "LIMIT_BAL"}


def test_an_institution_without_a_monitoring_path_is_named():
    with pytest.raises(LookupError, match=r"institutions \['alder_bank'\] have no monitoring_path"):
        monitoring_consortium(_config(path="a.csv"))


def test_across_silos_the_nodes_count_and_a_node_institution_cannot_name_a_path():
    with pytest.raises(ConfigError, match="monitoring_path is for simulation"):
        _config(node="127.0.0.1:7000", monitoring_path="x.csv")
    config = parse_config(
        {
            "model_name": "m",
            "institutions": [{"name": "alder_bank", "node": "127.0.0.1:7000"}],
            "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"},
        },
        Path("/data"),
    )
    consortium = monitoring_consortium(config)
    assert consortium.cross_silo and consortium.names == ["alder_bank"] and consortium.extracts == ()
