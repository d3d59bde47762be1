/* A stand-in for Windows' bcryptprimitives.dll, for Wine versions that lack it (Debian's Wine
 * 8.0). Rust's standard library takes its random seeds from ProcessPrng there; this forwards to
 * RtlGenRandom (advapi32's SystemFunction036), which every Wine has. Only the smoke test under
 * Wine uses it: real Windows ships the DLL, and the exe must not be distributed with this file. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
