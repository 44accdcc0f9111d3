"""The gateway role: a key that acts for the tenant each request names, and only that key.

Real broker with CURVE keys made by the real `cutq keys` command; requests built from the
protocol so the field under test (`as_tenant`) is set by hand.
"""

from __future__ import annotations

import pytest

from shared import protocol as p
from shared.client import CutqError
from tests.cluster import Cluster
from tests.test_security import Keys, keys, secure  # noqa: F401  (fixtures)


def _ask(client, msg: p.Message) -> p.Reply:
    return client._request(msg)


def _submit(tenant: str | None, tag: str) -> p.Submit:
    msg = p.Submit(req=0, names=[f"{tag}.png"], processor="noop", as_tenant=tenant)
    msg.blobs = [b"\x89PNG\r\n\x1a\n" + tag.encode()]
    return msg


def test_a_gateway_key_acts_only_for_the_tenant_it_names(cluster: Cluster, secure: Keys):
    secure.add("gw", "gateway")
    gw = cluster.client(credentials=secure.creds("gw"))
    alice = cluster.client(credentials=secure.creds("alice"))  # tenant A
    with pytest.raises(CutqError) as err:  # a gateway must say for whom
        _ask(gw, _submit(None, "nobody"))
    assert err.value.code == "forbidden"
    job = _ask(gw, _submit("A", "for-a")).data["job_id"]
    assert alice.status(job)["tenant"] == "A"  # alice sees it: it is hers
    assert _ask(gw, p.Status(req=0, job_id=job, as_tenant="A")).data["tenant"] == "A"
    with pytest.raises(CutqError) as err:  # acting for B, A's job does not exist
        _ask(gw, p.Status(req=0, job_id=job, as_tenant="B"))
    assert err.value.code == "not_found"
    listed = _ask(gw, p.ListJobs(req=0, as_tenant="B")).data
    assert listed["total"] == 0
    with pytest.raises(CutqError) as err:  # nobody else may name a tenant
        _ask(alice, _submit("B", "sneaky"))
    assert err.value.code == "forbidden"
    admin = cluster.client(credentials=secure.creds("root"))
    with pytest.raises(CutqError) as err:
        _ask(admin, p.Stats(req=0, as_tenant="A"))
    assert err.value.code == "forbidden"
    assert admin.stats()["by_tenant"]["A"]["queued"] == 1  # only the one for A was stored
