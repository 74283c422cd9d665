from __future__ import annotations

import orbweaver as ow


@ow.task
def triple(x: ow.Int32) -> ow.Int32:
    return 3 * x
