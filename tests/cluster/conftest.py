"""Fixtures of the Ray runtime suite: one small local Ray cluster for its tests, removed
at the end together with any detached controller a test left behind.

Ray is kept small, as the machine is shared: 2 CPUs, no dashboard, a 100 MB object store, and
every Ray address on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.ray_service import (
    Service,
    import_ray,
    kill_controller,
    start_service,
    stop_service,
)
from tests.support.ports import HOST
from tests.support.server import REPO_ROOT

# Ray replaces 127.0.0.1 by the machine's outward address for the node and the GCS unless it
# runs in its single-machine mode; this must be set before `ray` is imported (its constants
# are read then), and the cluster's processes and the `serve` subprocesses inherit it. All
# Ray traffic of the suite then stays on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[str]:
    """A local Ray for the tests of this directory (gone before the rest of the session runs,
    so it holds no memory meanwhile); yields its address (for `--ray-address`)."""
    ray = import_ray()
    # Ray starts its worker processes from the raylet's environment: make sure they can
    # import switchboard from this checkout even when the package is not installed.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), saved) if p)
    try:
        context = ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 1024 * 1024,
            _node_ip_address=HOST,
        )
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        kill_controller()
        ray.shutdown()


@pytest.fixture(scope="module")
def service(ray_cluster: str) -> Iterator[Service]:
    """One switchboard with 2 workers for a test module: `serve` runs in this process (the
    Ray driver, which also runs the MI); worker 0 listens on the base port B, worker 1 on
    B + 1."""
    running = start_service(2)
    try:
        yield running
    finally:
        stop_service(running)


@pytest.fixture
def no_controller_left(ray_cluster: str) -> Iterator[str]:
    """For tests that run `serve --runtime ray` as a subprocess: asked for before
    `switchboard_server`, so torn down after it; removes the detached controller should the
    driver have been killed before it could (the next module would find it running)."""
    yield ray_cluster
    kill_controller()
