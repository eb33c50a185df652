"""Model registry API routes."""

from django.urls import path

from hotswap.lib.routing import method_router
from models_app import apis, upload_apis, validation_apis

urlpatterns = [
    path("models", method_router("Models", get=apis.ModelVersionListApi, post=apis.ModelVersionUploadApi),
         name="model-collection"),
    path("models/<str:name>/versions", apis.ModelVersionHistoryApi.as_view(), name="model-version-history"),
    path("models/<str:name>/versions/<str:version>", apis.ModelVersionDetailApi.as_view(), name="model-version-detail"),
    path("models/<str:name>/versions/<str:version>/deprecate", apis.ModelVersionDeprecateApi.as_view(),
         name="model-version-deprecate"),
    path("models/<str:model_id>",
         method_router("Model", get=apis.ModelVersionGetApi, delete=apis.ModelVersionDeleteApi),
         name="model-detail"),
    path("models/<str:model_id>/download", apis.ModelDownloadApi.as_view(), name="model-download"),
    path("models/<str:name>/test-sets",
         method_router("TestSets", get=validation_apis.TestSetListApi, post=validation_apis.TestSetUploadApi),
         name="model-test-sets"),
    path("models/<str:model_id>/validate", validation_apis.ModelVersionValidateApi.as_view(), name="model-validate"),
    path("models/<str:model_id>/validation-report", validation_apis.ModelVersionValidationReportApi.as_view(),
         name="model-validation-report"),
    path("models/<str:model_id>/approve", validation_apis.ModelVersionApproveApi.as_view(), name="model-approve"),
    path("uploads", upload_apis.UploadSessionStartApi.as_view(), name="upload-collection"),
    path("uploads/<uuid:session_id>",
         method_router("UploadSession", get=upload_apis.UploadSessionGetApi, delete=upload_apis.UploadSessionAbortApi),
         name="upload-detail"),
    path("uploads/<uuid:session_id>/parts", upload_apis.UploadSessionPartsApi.as_view(), name="upload-parts"),
    path("uploads/<uuid:session_id>/parts/<int:number>", upload_apis.UploadSessionPartPutApi.as_view(),
         name="upload-part"),
    path("uploads/<uuid:session_id>/complete", upload_apis.UploadSessionCompleteApi.as_view(), name="upload-complete"),
    path("artifacts/<str:token>", apis.artifact_signed_download, name="artifact-signed-download"),
]
