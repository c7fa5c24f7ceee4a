"""Our own hair-colour read (mikubot.hair): the same pixels give the same colour, each Ren'Py character's
sprite reads as that character's hair, skin and background are left out, and the crop's choice of the
character's face goes by it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from facedetect.imageio import to_rgb
from facedetect.types import Detection
from mikubot.crop import colour_matches, crop_avatar, hair_of, rank_faces
from mikubot.colour import hair_difference
from mikubot.hair import read_hair, with_hair

# Each character's hair as an operator would set MIKU_HAIR_COLOURS for them (the median hair colour just
# above the face on the sprites; the same table bench/scenes.py labels its scenes with).
CHARACTERS = {"eileen": "#f87f7d", "lucy": "#3c3d3f", "sylvie": "#d07255"}


def sprite(art_dir: Path, name: str) -> np.ndarray:
    return np.asarray(to_rgb(Image.open(art_dir / name)))  # transparency flattened onto white, as detection sees it


def test_the_same_pixels_give_the_same_colour(art_dir: Path, face_labels: dict) -> None:
    """Repeated 40 times in a row and 20 more from 4 threads (two sprites interleaved): one colour each."""
    sylvie, eileen = sprite(art_dir, "sylvie blue smile.png"), sprite(art_dir, "eileen happy.png")
    s_box, e_box = face_labels["sylvie blue smile.png"][0], face_labels["eileen happy.png"][0]
    first = read_hair(sylvie, s_box).colour
    assert first is not None and first.startswith("#")
    assert {read_hair(sylvie, s_box).colour for _ in range(40)} == {first}
    other = read_hair(eileen, e_box).colour
    assert other not in (None, first)
    with ThreadPoolExecutor(4) as pool:
        got = set(pool.map(lambda job: read_hair(*job).colour, [(sylvie, s_box), (eileen, e_box)] * 10))
    assert got == {first, other}


def test_each_sprite_reads_as_its_own_characters_hair(art_dir: Path, face_labels: dict) -> None:
    """Every labelled Ren'Py character sprite: the read is nearer its own character's colour than the others'
    (animeface's own reading, checked the same way, gets 6 of the 13 wrong: Sylvie's orange as magenta)."""
    checked = 0
    for name, boxes in sorted(face_labels.items()):
        character = name.split()[0]
        if character not in CHARACTERS or len(boxes) != 1:
            continue
        colour = read_hair(sprite(art_dir, name), boxes[0]).colour
        assert colour is not None, name
        nearest = min(CHARACTERS, key=lambda c: hair_difference(colour, CHARACTERS[c]))
        assert nearest == character, f"{name}: read {colour}, nearest to {nearest}'s {CHARACTERS[nearest]}"
        checked += 1
    assert checked >= 12


def test_skin_and_background_are_left_out() -> None:
    """A drawn head on a busy blue background: a skin-coloured face box under a thin green fringe that leaves
    the background showing beside it and above it. The read is the green."""
    rng = np.random.default_rng(0)  # the picture's noise only; the read itself draws no random numbers
    h, w = 400, 600
    picture = np.zeros((h, w, 3), np.uint8)
    picture[:] = (40, 80, 200)
    picture += rng.integers(0, 30, (h, w, 3), dtype=np.uint8)  # a textured sky, the same all the way to the border
    box = (250.0, 200.0, 350.0, 300.0)
    picture[200:300, 250:350] = (250, 220, 200)  # skin
    picture[175:205, 265:335] = (40, 170, 60)  # the fringe: narrower than the band the read looks at
    read = read_hair(picture, box)
    assert read.colour is not None and hair_difference(read.colour, "#28aa3c") < 10, read
    assert read.kept >= 100


def test_with_hair_keeps_the_detectors_reading_beside_ours(art_dir: Path, face_labels: dict) -> None:
    image = Image.open(art_dir / "sylvie blue smile.png")
    box = tuple(face_labels["sylvie blue smile.png"][0])
    detections = [Detection(bbox=box, confidence=1.0, attributes={"hair_color": "#a0306f"})]  # type: ignore[arg-type]
    read = with_hair(image, detections)
    assert detections[0].attributes == {"hair_color": "#a0306f"}  # the input is left alone
    assert read[0].attributes["hair_color"] == "#a0306f"
    assert read[0].attributes["hair"] == read_hair(np.asarray(to_rgb(image)), box).colour
    assert hair_of(read[0]) == read[0].attributes["hair"]  # the choice goes by ours
    assert hair_of(detections[0]) == "#a0306f"  # and by the detector's when there is no read of ours
    # The crop's record shows both: the colour the choice went by and the detector's own reading.
    entry = crop_avatar(image, read, hair_colours=["#d07255"]).choice[0]
    assert entry["hair"] == read[0].attributes["hair"] and entry["hair_detector"] == "#a0306f"
    assert entry["hair_match"] is True and entry["chosen"] is True


def test_the_nearest_matching_hair_wins() -> None:
    """Red and orange hair both pass for a configured red; the red-haired face is the character, even when the
    orange-haired face is the more confident detection."""
    configured = ["#e0403a"]
    red = Detection(bbox=(100, 100, 200, 200), confidence=0.99, attributes={"hair": "#c8392f"})
    orange = Detection(bbox=(400, 100, 500, 200), confidence=1.0, attributes={"hair": "#e0782c"})
    grey = Detection(bbox=(250, 100, 350, 200), confidence=1.0, attributes={"hair": "#7a7a7a"})
    assert colour_matches("#c8392f", configured, 35) and colour_matches("#e0782c", configured, 35)
    ranked = [d for _, d in rank_faces([orange, grey, red], (600, 400), configured, 35)]
    assert ranked == [red, orange, grey]
    assert [d for _, d in rank_faces([orange, grey, red], (600, 400))][-1] is red  # no colours: confidence
