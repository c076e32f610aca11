@echo off
rem Shell completion of "kubectl rotate-certs" through kubectl (1.26 and
rem later), which runs kubectl_complete-rotate_certs from PATH with the words
rem typed after "kubectl rotate-certs" and offers what it prints. Windows finds
rem this file by its .cmd extension; keep it next to kubectl-rotate_certs.exe
rem (with krew, copy it into %USERPROFILE%\.krew\bin).
"%~dp0kubectl-rotate_certs.exe" __complete %*
