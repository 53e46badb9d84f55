"""The ``golden`` device: bit-exact with the golden model, with the card's buffer rules."""

import numpy as np
import pytest

from velcro.hw.kernel.config import SHIPPED
from velcro.sw import golden
from velcro.sw.runtime import Accelerator, KernelError


@pytest.mark.parametrize("split", [False, True], ids=["shipped", "split"])
def test_golden_device_is_bit_exact_with_the_golden_model(split, split_config, tiny_package,
                                                          golden_accelerator, images_for):
    config = split_config if split else SHIPPED
    package = tiny_package
    accelerator = golden_accelerator(package, config)
    images = images_for(package, 7)
    np.testing.assert_array_equal(accelerator.run(images), golden.run(package, images))
    np.testing.assert_array_equal(accelerator.run(images[:2]), golden.run(package, images[:2]))


def test_a_missing_sync_fails_like_on_the_card(tiny_package, wrapped_platform, images_for):
    class NoSync(wrapped_platform):
        def allocate(self, shape, dtype, target):
            buffer = self.inner.allocate(shape, dtype, target)
            buffer.sync_to_device = lambda: None
            return buffer

    package = tiny_package
    accelerator = Accelerator(NoSync(), SHIPPED)
    accelerator.load(package)
    # The kernel finds zeros where the program should be: opcode 0.
    with pytest.raises(KernelError, match=r"BAD_DESCRIPTOR .* descriptor 0 \(unknown opcode 0"):
        accelerator.run(images_for(package, 1))
