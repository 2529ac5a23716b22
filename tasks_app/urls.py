"""(being written)"""
urlpatterns = []
