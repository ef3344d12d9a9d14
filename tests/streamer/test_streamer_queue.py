import asyncio

import numpy as np

from sources.frame import Frame
from streamer.pipeline import FrameQueue

IMG = np.zeros((2, 2), np.uint8)


def frame(i):
    return Frame(stream="s", seq=i, t_capture=0.0, image=IMG)


async def test_drop_oldest_never_waits_and_counts_drops():
    q = FrameQueue(3, "drop_oldest")
    dropped = [await q.put(frame(i)) for i in range(10)]
    assert sum(dropped) == 7 and len(q) == 3
    await q.close()
    got = [f.seq for f in await drain(q)]
    assert got == [7, 8, 9]  # the newest survive, in order


async def test_block_policy_waits_for_room_and_loses_nothing():
    q = FrameQueue(2, "block")
    out = []

    async def consumer():
        while (f := await q.get()) is not None:
            out.append(f.seq)

    task = asyncio.create_task(consumer())
    drops = [await q.put(frame(i)) for i in range(50)]
    await q.close()
    await task
    assert drops == [0] * 50 and out == list(range(50))
    assert q.high_water == 2  # the queue was full: the producer waited for room


async def test_close_wakes_waiting_consumer():
    q = FrameQueue(2, "block")
    task = asyncio.create_task(q.get())
    await asyncio.sleep(0)  # one turn of the loop: the task runs until it waits on the empty queue
    assert not task.done()
    await q.close()
    assert await asyncio.wait_for(task, 1) is None


async def drain(q):
    items = []
    while (f := await q.get()) is not None:
        items.append(f)
    return items
