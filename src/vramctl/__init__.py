"""vramctl: know what holds VRAM and free it — measure, unload, wait — instead of "swap and sleep 3 s".

    from vramctl import Coordinator, VramSettings
    coord = Coordinator(VramSettings())
    async with coord.reserve("face-detector") as r:
        ...  # detect faces on a whole batch; r.timeline says what it took
"""

from .config import Consumer, VramSettings
from .coordinator import Coordinator, Reservation
from .errors import LeaseError, NotEnoughVram, ReservationTimeout, ServerError, UnknownConsumer, UnloadUnsupported, VramError
from .lease import HostLease
from .probes import EmulatorProbe, GpuMemory, GpuProcess, NoProbe, NvidiaSmiProbe, NvmlProbe, Probe, ProbeError, select_probe
from .timeline import Timeline, TimelineEvent

__all__ = [
    "Consumer", "Coordinator", "EmulatorProbe", "GpuMemory", "GpuProcess", "HostLease", "LeaseError", "NoProbe", "NotEnoughVram",
    "NvidiaSmiProbe", "NvmlProbe", "Probe", "ProbeError", "Reservation", "ReservationTimeout", "ServerError",
    "Timeline", "TimelineEvent", "UnknownConsumer", "UnloadUnsupported", "VramError", "VramSettings", "select_probe",
]
