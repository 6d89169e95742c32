"""Time zone names too long for a file name (``ZoneInfo`` looks a name up as a path and failed with
``OSError: File name too long``): a 400 naming the field on the budgets and analytics APIs (they
were a 503 "budget store failed" leaking the install path, or a 500), and a config error line in
``check-config`` (it was a traceback).  ``budgets.model.zone`` is the one check they all use."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from costproxy.budgets.model import BudgetInvalid, zone
from costproxy.cli import main
from tests.conftest import ADMIN_TOKEN, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BAD_ZONES = ["a" * 300, "Europe/" + "b" * 300, "/etc/localtime", "Europe/Berlin\x00", "../../etc/passwd"]


@pytest.mark.parametrize("name", BAD_ZONES)
def test_a_name_that_is_no_zone_is_budget_invalid_and_not_echoed_in_full(name: str) -> None:
    with pytest.raises(BudgetInvalid) as info:
        zone(name, field_name="tz")
    assert info.value.field == "tz" and len(str(info.value)) < 200
    assert zone("Europe/Berlin").key == "Europe/Berlin"


async def test_the_budgets_and_analytics_apis_answer_400_naming_the_field(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    long_tz = "a" * 300
    budget = {"id": "tzb", "name": "t", "scopeType": "team", "scopeId": "core", "amount": "1", "period": "daily"}
    resp = await proxy.client.post("/api/v1/budgets", headers=ADMIN, json={**budget, "timezone": long_tz})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "invalid_request", body
    assert body["error"]["param"] == "timezone" and "site-packages" not in body["error"]["message"], body
    resp = await proxy.client.post("/api/v1/budgets", headers=ADMIN, json=budget)
    assert resp.status == 201, await resp.text()
    resp = await proxy.client.patch("/api/v1/budgets/tzb", headers=ADMIN, json={"timezone": long_tz})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "timezone", body
    for path in ("/api/v1/analytics/overview", "/api/v1/analytics/spend"):
        resp = await proxy.client.get(path, headers=ADMIN, params={"tz": long_tz})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["param"] == "tz", (path, body)
        assert len(body["error"]["message"]) < 200


def test_check_config_reports_a_yaml_budget_time_zone_too_long(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "config").mkdir()
    (tmp_path / "rules").mkdir()
    (tmp_path / "config" / "models.yaml").write_text((root / "config" / "models.yaml").read_text())
    document = yaml.safe_load((root / "config" / "costproxy.yaml").read_text())
    document["budgets"] = {"definitions": [{"id": "b1", "name": "b", "scope_type": "team", "scope_id": "x",
                                            "limit_usd": "5", "period": "daily", "timezone": "a" * 300}]}
    path = tmp_path / "config" / "costproxy.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "timezone" in err and "not an IANA time zone" in err, err
