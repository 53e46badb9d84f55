"""A local Ray instance for the cluster tests: two CPUs, no dashboard, a small object
store; started once for the session and stopped at its end."""

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
             logging_level="ERROR", configure_logging=True)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _test_classes_by_value(request):
    """Workers cannot import the test modules: classes defined in a test module (a lazy
    image source, a worker that dies) travel to them by value."""
    import sys

    from ray import cloudpickle

    module = sys.modules.get(request.module.__name__)
    if module is not None:
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            pass
